"""Data object (magic FRYD): one block, content-addressed by the blake2b-256
of its raw bytes, optionally zstd-compressed. These run in worker threads."""
from __future__ import annotations

import hashlib
import struct

import zstandard

from fsd.format.framing import CorruptObject

MAGIC = b"FRYD"
VERSION = 1
_HEAD = struct.Struct(">4sBBI")   # magic, version, flags, raw length
FLAG_ZSTD = 1


def block_hash(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=32).digest()


def encode_block(raw: bytes, compress: bool) -> tuple[bytes, bytes]:
    h = block_hash(raw)
    flags, payload = 0, raw
    if compress:
        z = zstandard.ZstdCompressor(level=1).compress(raw)
        if len(z) < len(raw):
            flags, payload = FLAG_ZSTD, z
    return h, _HEAD.pack(MAGIC, VERSION, flags, len(raw)) + payload


def decode_block(obj: bytes, expected_hash: bytes, key: str) -> bytes:
    if len(obj) < _HEAD.size:
        raise CorruptObject(f"{key}: truncated data object")
    magic, version, flags, length = _HEAD.unpack_from(obj)
    if magic != MAGIC:
        raise CorruptObject(f"{key}: bad magic {magic!r}")
    if version != VERSION:
        raise CorruptObject(f"{key}: unsupported data object version {version}")
    if flags & ~FLAG_ZSTD:
        raise CorruptObject(f"{key}: unknown flags {flags:#x}")
    payload = memoryview(obj)[_HEAD.size:]
    if flags & FLAG_ZSTD:
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=length)
        except zstandard.ZstdError as e:
            raise CorruptObject(f"{key}: zstd error: {e}") from None
    else:
        raw = bytes(payload)
    if len(raw) != length:
        raise CorruptObject(f"{key}: length {len(raw)} != {length}")
    if block_hash(raw) != expected_hash:
        raise CorruptObject(f"{key}: checksum mismatch")
    return raw
