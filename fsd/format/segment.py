"""Journal segment or seal (magic FRYJ).

Records stay raw lists here: their meaning is fsd.meta.records' business.
This codec only guarantees the envelope, so replay can rely on kind, epoch,
seq and a list of non-empty lists without re-checking them.
"""
from __future__ import annotations

from dataclasses import dataclass

from fsd.format.framing import CorruptObject, frame, optional, require, unframe
from fsd.meta.records import Record

MAGIC = b"FRYJ"
KINDS = ("begin", "segment", "seal")
SEAL_REASONS = ("release", "takeover")   # what ferry writes


@dataclass
class Segment:
    kind: str
    epoch: int
    seq: int
    created_ns: int
    records: list[Record]
    reason: str | None = None      # seals: "release" or "takeover"
    sealed_by: int | None = None   # seals: the sealing epoch
    batch: int | None = None       # commits: the mount's batch number (durability=local)

    def encode(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies every record (hot at commit).
        return frame(MAGIC, {"kind": self.kind, "epoch": self.epoch, "seq": self.seq,
                             "created_ns": self.created_ns, "records": self.records, "reason": self.reason,
                             "sealed_by": self.sealed_by, "batch": self.batch})

    @classmethod
    def decode(cls, data: bytes, key: str) -> Segment:
        b = require(unframe(MAGIC, data, key), key, {
            "kind": str, "epoch": int, "seq": int, "created_ns": int, "records": list})
        kind, records = b["kind"], b["records"]
        if kind not in KINDS:
            raise CorruptObject(f"{key}: unknown segment kind {kind!r}")
        if b["epoch"] < 1 or b["seq"] < 1:
            raise CorruptObject(f"{key}: epoch {b['epoch']} / seq {b['seq']} must both be >= 1")
        for i, r in enumerate(records):
            if not isinstance(r, list) or not r:
                raise CorruptObject(f"{key}: record {i} is not a non-empty list")
        reason = optional(b, key, "reason", str)
        sealed_by = optional(b, key, "sealed_by", int)
        batch = optional(b, key, "batch", int)
        if kind == "seal":
            if records:
                raise CorruptObject(f"{key}: a seal carries {len(records)} records; seals carry none")
            # Any reason string still seals: an unknown one must not stop replay.
            if not reason:
                raise CorruptObject(f"{key}: seal has no reason")
            if sealed_by is None:
                raise CorruptObject(f"{key}: seal does not say which epoch sealed it")
        return cls(kind, b["epoch"], b["seq"], b["created_ns"], records, reason, sealed_by, batch)
