"""Metadata snapshot (magic FRYS): body {epoch, seq, next_ino, z}, where z is
the zstd-compressed msgpack list of records recreating the state."""
from __future__ import annotations

from typing import Iterable

import msgpack
import zstandard

from fsd.format.framing import CorruptObject, frame, require, unframe

MAGIC = b"FRYS"


def encode_snapshot(epoch: int, seq: int, next_ino: int, records: Iterable[list]) -> bytes:
    raw = msgpack.packb(list(records), use_bin_type=True)
    z = zstandard.ZstdCompressor(level=3).compress(raw)
    return frame(MAGIC, {"epoch": epoch, "seq": seq, "next_ino": next_ino, "z": z})


def decode_snapshot(data: bytes, key: str) -> tuple[int, int, int, list]:
    b = require(unframe(MAGIC, data, key), key, {"epoch": int, "seq": int, "next_ino": int, "z": bytes})
    try:
        records = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(b["z"]), raw=False,
                                  strict_map_key=False)
    except Exception as e:
        raise CorruptObject(f"{key}: snapshot body unreadable: {e}") from None
    if not isinstance(records, list):
        raise CorruptObject(f"{key}: snapshot records are not a list")
    return b["epoch"], b["seq"], b["next_ino"], records
