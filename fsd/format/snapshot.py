"""Metadata snapshot (magic FRYS): the state after segment (epoch, seq).

Framed body (a msgpack map): `epoch`, `seq`, `next_ino` (ints) and `z`: the
zstd-compressed msgpack list of records (INODE, DENT, BLOCK, XATTR) that
recreate the state. Only the record list is compressed, so a reader can check
the position without decompressing, and the frame's checksum still covers
every byte (docs/format.md: "zstd-compressed msgpack map epoch, seq, next_ino,
records" - same content, the three small ints just sit outside `z`).
"""
from __future__ import annotations

from collections.abc import Iterable

import msgpack
import zstandard

from fsd.format.framing import CorruptObject, frame, require, unframe
from fsd.meta.records import Record

MAGIC = b"FRYS"
_LEVEL = 3


def encode_snapshot(epoch: int, seq: int, next_ino: int, records_iterable: Iterable[Record]) -> bytes:
    records = records_iterable if isinstance(records_iterable, list) else list(records_iterable)
    z = zstandard.ZstdCompressor(level=_LEVEL).compress(msgpack.packb(records, use_bin_type=True))
    return frame(MAGIC, {"epoch": epoch, "seq": seq, "next_ino": next_ino, "z": z})


def decode_snapshot(data: bytes, key: str) -> tuple[int, int, int, list[Record]]:
    """(epoch, seq, next_ino, records); CorruptObject naming `key` otherwise."""
    b = require(unframe(MAGIC, data, key), key, {"epoch": int, "seq": int, "next_ino": int, "z": bytes})
    try:
        raw = zstandard.ZstdDecompressor().decompress(b["z"])
    except zstandard.ZstdError as e:
        raise CorruptObject(f"{key}: snapshot records do not decompress: {e}") from None
    try:
        records = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptObject(f"{key}: snapshot records are not valid msgpack: {e}") from None
    if not isinstance(records, list):
        raise CorruptObject(f"{key}: snapshot records are a {type(records).__name__}, expected a list")
    for i, r in enumerate(records):
        if not isinstance(r, list) or not r:
            raise CorruptObject(f"{key}: snapshot record {i} is not a non-empty list")
    return b["epoch"], b["seq"], b["next_ino"], records
