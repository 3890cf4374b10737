"""Volume superblock (magic FRYB): the parameters fixed at mkfs.

Every mount trusts these values to lay out and decode data, so `decode`
re-checks them (a superblock with an impossible block size is corruption,
not a configuration to run with) and `make_superblock` refuses bad `-o`
options before anything is written.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field

from fsd.format.framing import CorruptObject, frame, require, unframe
from fsd.format.keys import validate_volume_name
from fsd.options import parse_size

__all__ = ["Superblock", "make_superblock", "parse_size", "MAGIC", "FORMAT",
           "MIN_BLOCK_SIZE", "MAX_BLOCK_SIZE", "DEFAULT_BLOCK_SIZE", "COMPRESSIONS", "FENCING_MODES"]

MAGIC = b"FRYB"
FORMAT = 2            # what mkfs writes: a root per incarnation, epoch-tagged data keys
FORMATS = (1, 2)      # what this ferry reads (docs/format.md, "Versions")
MIN_BLOCK_SIZE = 64 << 10
MAX_BLOCK_SIZE = 16 << 20
DEFAULT_BLOCK_SIZE = 1 << 20
COMPRESSIONS = ("none", "zstd")
FENCING_MODES = ("conditional", "timing")
KNOWN_OPTIONS = {
    "block_size": "64k..16M, a power of two (default 1M)",
    "compression": "none|zstd (default none)",
}
_UUID_RE = re.compile(r"[0-9a-f]{32}")


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
        if b["format"] not in FORMATS:
            raise CorruptObject(f"{key}: volume format {b['format']} is not supported "
                                f"(this ferry reads formats {', '.join(map(str, FORMATS))}; written by a newer ferry?)")
        if not valid_block_size(b["block_size"]):
            raise CorruptObject(f"{key}: block_size {b['block_size']} is not a power of two "
                                f"between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}")
        if b["compression"] not in COMPRESSIONS:
            raise CorruptObject(f"{key}: unknown compression {b['compression']!r}")
        if b["fencing"] not in FENCING_MODES:
            raise CorruptObject(f"{key}: unknown fencing mode {b['fencing']!r}")
        if not _UUID_RE.fullmatch(b["uuid"]):
            raise CorruptObject(f"{key}: uuid {b['uuid']!r} is not 32 lower-case hex digits")
        return cls(**{k: b[k] for k in cls.__dataclass_fields__})


def valid_block_size(n: int) -> bool:
    return MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE and n & (n - 1) == 0


def make_superblock(volume: str, options: dict[str, str], now_ns: int) -> Superblock:
    """A new volume's superblock from mkfs `-o` options; ValueError explains
    any unusable volume name or option (listing the known options)."""
    validate_volume_name(volume)
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ValueError(f"unknown volume option(s) {', '.join(unknown)}; known: "
                         + "; ".join(f"{k}={v}" for k, v in KNOWN_OPTIONS.items()))
    text = options.get("block_size")
    bs = DEFAULT_BLOCK_SIZE
    if text is not None:
        try:
            bs = parse_size(text)
        except ValueError as e:
            raise ValueError(f"block_size: {e}") from None
        if not valid_block_size(bs):
            raise ValueError(f"block_size must be a power of two between 64k and 16M, not {text!r}")
    comp = options.get("compression", "none")
    if comp not in COMPRESSIONS:
        raise ValueError(f"compression must be 'none' or 'zstd', not {comp!r}")
    return Superblock(volume=volume, uuid=secrets.token_hex(16), format=FORMAT, block_size=bs,
                      compression=comp, created_ns=now_ns)
