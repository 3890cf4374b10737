"""Framing shared by every ferry object except data blocks:
magic (4) | version (1) | msgpack body | blake2b-256 of everything before (32)."""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack

VERSION = 1
_SUM = 32


class CorruptObject(Exception):
    """An object failed its integrity or format checks; the message names it."""


def frame(magic: bytes, body: Any) -> bytes:
    head = magic + bytes([VERSION]) + msgpack.packb(body, use_bin_type=True)
    return head + hashlib.blake2b(head, digest_size=_SUM).digest()


def unframe(magic: bytes, data: bytes, key: str) -> Any:
    if len(data) < 5 + _SUM:
        raise CorruptObject(f"{key}: truncated ({len(data)} bytes)")
    if data[:4] != magic:
        raise CorruptObject(f"{key}: bad magic {bytes(data[:4])!r}, expected {magic!r}")
    if data[4] != VERSION:
        raise CorruptObject(f"{key}: unsupported format version {data[4]} (written by a newer ferry?)")
    head, tail = data[:-_SUM], data[-_SUM:]
    if hashlib.blake2b(head, digest_size=_SUM).digest() != tail:
        raise CorruptObject(f"{key}: checksum mismatch")
    try:
        return msgpack.unpackb(head[5:], raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise CorruptObject(f"{key}: body is not valid msgpack: {e}") from None


def require(body: Any, key: str, fields: dict[str, type | tuple]) -> dict:
    """Check a decoded map has the fields with the types; CorruptObject otherwise."""
    if not isinstance(body, dict):
        raise CorruptObject(f"{key}: body is not a map")
    for name, typ in fields.items():
        if name not in body or not isinstance(body[name], typ):
            raise CorruptObject(f"{key}: field {name!r} missing or of the wrong type")
    return body
