"""Incarnation record (magic FRYI): which root holds volume NAME's n-th life.

`NAME/incarnations/{n:016x}` is created once, with `If-None-Match: *`, as
the last step of mkfs: it is the commit point of a volume's creation, and
the conditional create is what makes two racing creates of one name pick
one winner. The current volume of a name is its highest incarnation; a
removed volume's record is deleted last, after everything under its root.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from fsd.format.framing import CorruptObject, frame, require, unframe

MAGIC = b"FRYI"
_UUID_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Incarnation:
    name: str
    n: int
    uuid: str
    created_ns: int

    def encode(self) -> bytes:
        return frame(MAGIC, asdict(self))

    @classmethod
    def decode(cls, data: bytes, key: str) -> Incarnation:
        b = require(unframe(MAGIC, data, key), key, {"name": str, "n": int, "uuid": str, "created_ns": int})
        if not _UUID_RE.fullmatch(b["uuid"]):
            raise CorruptObject(f"{key}: uuid {b['uuid']!r} is not 32 lower-case hex digits")
        if b["n"] < 1:
            raise CorruptObject(f"{key}: incarnation {b['n']} is not >= 1")
        return cls(**{k: b[k] for k in cls.__dataclass_fields__})
