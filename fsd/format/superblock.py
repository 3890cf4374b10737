"""Volume superblock (magic FRYB): parameters fixed at mkfs."""
from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field

from fsd.format.framing import frame, require, unframe
from fsd.options import parse_size

MAGIC = b"FRYB"
FORMAT = 1
KNOWN_OPTIONS = {"block_size": "64k..16M, power of two (default 1M)", "compression": "none|zstd (default none)"}


@dataclass
class Superblock:
    volume: str
    uuid: str
    format: int
    block_size: int
    compression: str
    created_ns: int
    fencing: str = "conditional"
    options: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        return frame(MAGIC, asdict(self))

    @classmethod
    def decode(cls, data: bytes, key: str) -> "Superblock":
        b = require(unframe(MAGIC, data, key), key, {
            "volume": str, "uuid": str, "format": int, "block_size": int, "compression": str,
            "created_ns": int, "fencing": str, "options": dict})
        return cls(**{k: b[k] for k in cls.__dataclass_fields__})


def make_superblock(volume: str, options: dict[str, str], now_ns: int) -> Superblock:
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ValueError(f"unknown volume option(s) {', '.join(unknown)}; known: "
                         + "; ".join(f"{k}={v}" for k, v in KNOWN_OPTIONS.items()))
    bs = parse_size(options.get("block_size", "1M"))
    if bs < 64 * 1024 or bs > 16 * 1024 * 1024 or bs & (bs - 1):
        raise ValueError(f"block_size must be a power of two between 64k and 16M, not {options['block_size']!r}")
    comp = options.get("compression", "none")
    if comp not in ("none", "zstd"):
        raise ValueError(f"compression must be 'none' or 'zstd', not {comp!r}")
    return Superblock(volume=volume, uuid=secrets.token_hex(16), format=FORMAT, block_size=bs,
                      compression=comp, created_ns=now_ns)
