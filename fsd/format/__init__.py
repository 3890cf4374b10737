"""Codecs of ferry's on-storage format (docs/format.md is the contract).

Pure code: bytes in, objects out, no I/O. Every decoder reports damage as
`CorruptObject` naming the object's key, and nothing else.
"""
from fsd.format.framing import CorruptObject

__all__ = ["CorruptObject"]
