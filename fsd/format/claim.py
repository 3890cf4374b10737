"""Epoch claim (magic FRYE): who owns an ownership period."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from fsd.format.framing import frame, require, unframe

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
        return cls(**{k: b[k] for k in cls.__dataclass_fields__})
