"""Journal segment or seal (magic FRYJ)."""
from __future__ import annotations

from dataclasses import dataclass

from fsd.format.framing import CorruptObject, frame, require, unframe

MAGIC = b"FRYJ"
KINDS = ("begin", "segment", "seal")


@dataclass
class Segment:
    kind: str
    epoch: int
    seq: int
    created_ns: int
    records: list
    reason: str | None = None
    sealed_by: int | None = None
    batch: int | None = None

    def encode(self) -> bytes:
        # Not dataclasses.asdict: it deep-copies every record (hot at commit).
        return frame(MAGIC, {"kind": self.kind, "epoch": self.epoch, "seq": self.seq,
                             "created_ns": self.created_ns, "records": self.records, "reason": self.reason,
                             "sealed_by": self.sealed_by, "batch": self.batch})

    @classmethod
    def decode(cls, data: bytes, key: str) -> "Segment":
        b = require(unframe(MAGIC, data, key), key, {
            "kind": str, "epoch": int, "seq": int, "created_ns": int, "records": list})
        if b["kind"] not in KINDS:
            raise CorruptObject(f"{key}: unknown segment kind {b['kind']!r}")
        if not all(isinstance(r, list) and r for r in b["records"]):
            raise CorruptObject(f"{key}: records must be non-empty lists")
        return cls(b["kind"], b["epoch"], b["seq"], b["created_ns"], b["records"],
                   b.get("reason"), b.get("sealed_by"), b.get("batch"))
