"""Epoch claim (magic FRYE): who owns an ownership period of a volume.

The token is random per mount and remembered by the cache directory, so a
remount on the same host can recognise its own crashed epoch (docs/format.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from fsd.format.framing import CorruptObject, frame, optional, require, unframe

MAGIC = b"FRYE"
# What the epoch was claimed for. "remove": the volume is being removed;
# no mount may claim after it (docs/format.md, "Removal").
PURPOSES = ("mount", "remove")
# Format of the ferry that claimed: 2 never re-uses a data object of another
# epoch, which is what lets GC collect format 1's untagged objects. Claims
# written before the field existed read as 1.
CLAIM_FORMAT = 2


@dataclass
class EpochClaim:
    epoch: int
    host: str
    pid: int
    token: str
    claimed_ns: int
    takeover: bool
    purpose: str = "mount"
    format: int = CLAIM_FORMAT

    def encode(self) -> bytes:
        return frame(MAGIC, asdict(self))

    @classmethod
    def decode(cls, data: bytes, key: str) -> EpochClaim:
        b = require(unframe(MAGIC, data, key), key, {
            "epoch": int, "host": str, "pid": int, "token": str, "claimed_ns": int, "takeover": bool})
        if b["epoch"] < 1:
            raise CorruptObject(f"{key}: epoch {b['epoch']} is not >= 1")
        purpose = optional(b, key, "purpose", str) or "mount"
        if purpose not in PURPOSES:
            # Unknown purposes come from a newer ferry: never mount over them.
            raise CorruptObject(f"{key}: unknown claim purpose {purpose!r} (written by a newer ferry?)")
        fmt = optional(b, key, "format", int) or 1
        fields = {k: b[k] for k in cls.__dataclass_fields__ if k not in ("purpose", "format")}
        return cls(**fields, purpose=purpose, format=fmt)
