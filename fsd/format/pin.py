"""Pin record (magic FRYP): a metadata snapshot kept alive against GC.

`ROOT/pins/snap/NAME` is a user snapshot; `ROOT/pins/clone/UUID` keeps
what the clone with that uuid shares with this volume (its `holder` is the
clone's root). A pin is written twice by its creator (`fsd.backup.snapshots.create`,
`fsd.backup.clones.create`):

1. `pending`, create-only, *before* the state is read, with `position`
   the journal position then committed. While a pending pin is younger
   than `PENDING_TIMEOUT_NS`, GC deletes no data object and no snapshot
   (it cannot know yet what the pin will reference);
2. `ready`, once the metadata snapshot at `position` exists: GC keeps that
   snapshot and every data object its records reference.

A creator that takes longer than half the timeout gives up and deletes
its pending pin; a pending pin older than the timeout is abandoned (its
creator died), shown as such and deleted by GC.
"""
from __future__ import annotations

from dataclasses import dataclass

from fsd.format.framing import CorruptObject, frame, require, unframe

MAGIC = b"FRYP"
PENDING, READY = "pending", "ready"
PENDING_TIMEOUT_NS = 10 * 60 * 10**9


@dataclass(frozen=True)
class Pin:
    kind: str                   # "snap" | "clone"
    name: str
    state: str                  # pending | ready
    position: tuple[int, int]   # ready: the pinned snapshot's (epoch, seq); pending: committed at the start
    created_ns: int
    holder: str | None = None   # clone pins: the clone's root

    def encode(self) -> bytes:
        d = {"kind": self.kind, "name": self.name, "state": self.state, "position": list(self.position),
             "created_ns": self.created_ns}
        if self.holder is not None:
            d["holder"] = self.holder
        return frame(MAGIC, d)

    @classmethod
    def decode(cls, data: bytes, key: str) -> Pin:
        b = require(unframe(MAGIC, data, key), key, {"kind": str, "name": str, "state": str, "position": list,
                                                      "created_ns": int})
        if b["state"] not in (PENDING, READY):
            raise CorruptObject(f"{key}: pin state {b['state']!r} is not pending or ready")
        pos = b["position"]
        if len(pos) != 2 or not all(isinstance(x, int) and x >= 0 for x in pos):
            raise CorruptObject(f"{key}: pin position {pos!r} is not [epoch, seq]")
        holder = b.get("holder")
        if holder is not None and not isinstance(holder, str):
            raise CorruptObject(f"{key}: pin holder {holder!r} is not a volume root")
        return cls(kind=b["kind"], name=b["name"], state=b["state"], position=(pos[0], pos[1]),
                   created_ns=b["created_ns"], holder=holder)

    def abandoned(self, now_ns: int) -> bool:
        return self.state == PENDING and now_ns - self.created_ns > PENDING_TIMEOUT_NS
