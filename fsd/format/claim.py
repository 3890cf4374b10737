"""Epoch claim (magic FRYE): who owns an ownership period of a volume.

The token is random per mount and remembered by the cache directory, so a
remount on the same host can recognise its own crashed epoch (docs/format.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from fsd.format.framing import CorruptObject, frame, require, unframe

MAGIC = b"FRYE"


@dataclass
class EpochClaim:
    epoch: int
    host: str
    pid: int
    token: str
    claimed_ns: int
    takeover: bool

    def encode(self) -> bytes:
        return frame(MAGIC, asdict(self))

    @classmethod
    def decode(cls, data: bytes, key: str) -> "EpochClaim":
        b = require(unframe(MAGIC, data, key), key, {
            "epoch": int, "host": str, "pid": int, "token": str, "claimed_ns": int, "takeover": bool})
        if b["epoch"] < 1:
            raise CorruptObject(f"{key}: epoch {b['epoch']} is not >= 1")
        return cls(**{k: b[k] for k in cls.__dataclass_fields__})
