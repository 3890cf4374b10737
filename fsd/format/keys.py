"""Key layout of a volume in the object store (docs/format.md). Pure.

Numbers are 16-digit lower-case hex so that the lexical order in which stores
list keys is their numeric order; parsers accept exactly that spelling (and
nothing else), so `build(parse(key)) == key` for every key they accept and
stray objects under a volume's prefix are ignored rather than misread.
"""
from __future__ import annotations

import re

MAX_VOLUME_NAME = 128
_NAME_CHARS_RE = re.compile(r"[A-Za-z0-9._-]+")
_HEX16_RE = re.compile(r"[0-9a-f]{16}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_U64 = 1 << 64
HASH_SIZE = 32


def validate_volume_name(name: str) -> None:
    """Raise ValueError with a clear message for an unusable volume name.

    The name is the first component of every key and a directory name in the
    cache, so it must be safe as both: ASCII letters, digits and `._-`, not
    starting with `.` (hidden, `.`/`..`) or `-` (read as a command-line flag).
    """
    if not isinstance(name, str):
        raise ValueError(f"volume name must be a string, not {type(name).__name__}")
    if not name:
        raise ValueError("volume name must not be empty")
    if len(name) > MAX_VOLUME_NAME:
        raise ValueError(f"volume name is {len(name)} characters long; at most {MAX_VOLUME_NAME} are allowed")
    if name in (".", ".."):
        raise ValueError(f"volume name {name!r} is not allowed")
    if not _NAME_CHARS_RE.fullmatch(name):
        bad = next(c for c in name if not _NAME_CHARS_RE.fullmatch(c))
        raise ValueError(f"volume name {name!r} contains {bad!r}: use only ASCII letters, digits, "
                         f"'.', '_' and '-'")
    if name[0] in ".-":
        raise ValueError(f"volume name {name!r} must not start with {name[0]!r}")


def _h(n: int) -> str:
    """16-digit hex; out-of-range numbers would break the lexical order."""
    if not 0 <= n < _U64:
        raise ValueError(f"key number {n} is outside 0..2**64-1")
    return f"{n:016x}"


def _hex16(s: str) -> int | None:
    return int(s, 16) if _HEX16_RE.fullmatch(s) else None


def superblock_key(vol: str) -> str:
    return f"{vol}/superblock"


def epochs_prefix(vol: str) -> str:
    return f"{vol}/epochs/"


def epoch_key(vol: str, e: int) -> str:
    return f"{vol}/epochs/{_h(e)}"


def parse_epoch_key(vol: str, key: str) -> int | None:
    p = epochs_prefix(vol)
    return _hex16(key[len(p):]) if key.startswith(p) else None


def journal_prefix(vol: str, e: int | None = None) -> str:
    """All journal keys of the volume, or (with `e`) those of one epoch."""
    return f"{vol}/journal/" if e is None else f"{vol}/journal/{_h(e)}/"


def journal_key(vol: str, e: int, seq: int) -> str:
    return f"{vol}/journal/{_h(e)}/{_h(seq)}"


def parse_journal_key(vol: str, key: str) -> tuple[int, int] | None:
    """(epoch, seq) of a journal key of `vol`, None for anything else."""
    p = journal_prefix(vol)
    if not key.startswith(p):
        return None
    e, sep, s = key[len(p):].partition("/")
    ei, si = _hex16(e), _hex16(s)
    return None if not sep or ei is None or si is None else (ei, si)


def snapshots_prefix(vol: str) -> str:
    return f"{vol}/snapshots/"


def snapshot_key(vol: str, e: int, seq: int) -> str:
    return f"{vol}/snapshots/{_h(e)}-{_h(seq)}"


def parse_snapshot_key(vol: str, key: str) -> tuple[int, int] | None:
    """(epoch, seq) of a snapshot key of `vol`, None for anything else."""
    p = snapshots_prefix(vol)
    if not key.startswith(p):
        return None
    e, sep, s = key[len(p):].partition("-")
    ei, si = _hex16(e), _hex16(s)
    return None if not sep or ei is None or si is None else (ei, si)


def data_prefix(vol: str) -> str:
    return f"{vol}/data/"


def data_key(vol: str, hash_bytes: bytes) -> str:
    """Key of the data object whose raw content has blake2b-256 `hash_bytes`."""
    if len(hash_bytes) != HASH_SIZE:
        raise ValueError(f"a block hash is {HASH_SIZE} bytes, not {len(hash_bytes)}")
    x = hash_bytes.hex()
    return f"{vol}/data/{x[:2]}/{x}"


def parse_data_key(vol: str, key: str) -> bytes | None:
    """The 32-byte hash named by a data key of `vol`, None for anything else."""
    p = data_prefix(vol)
    if not key.startswith(p):
        return None
    fan, sep, x = key[len(p):].partition("/")
    if not sep or not _HEX64_RE.fullmatch(x) or fan != x[:2]:
        return None
    return bytes.fromhex(x)
