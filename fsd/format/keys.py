"""Key layout of a volume in the object store (docs/format.md). Pure.

Numbers are 16-digit lower-case hex so lexical order == numeric order."""
from __future__ import annotations

import re

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def validate_volume_name(name: str) -> None:
    """Raise ValueError with a clear message for an unusable volume name."""
    if not isinstance(name, str) or not name:
        raise ValueError("volume name must not be empty")
    if len(name) > 128:
        raise ValueError(f"volume name is {len(name)} characters long; at most 128 are allowed")
    if name in (".", ".."):
        raise ValueError(f"volume name {name!r} is not allowed")
    if not _NAME_RE.match(name):
        raise ValueError(f"volume name {name!r} is invalid: use letters, digits, '.', '_' and '-', "
                         f"not starting with '.' or '-'")


def _h(n: int) -> str:
    return f"{n:016x}"


def superblock_key(vol: str) -> str:
    return f"{vol}/superblock"


def epochs_prefix(vol: str) -> str:
    return f"{vol}/epochs/"


def epoch_key(vol: str, e: int) -> str:
    return f"{vol}/epochs/{_h(e)}"


def journal_prefix(vol: str, e: int | None = None) -> str:
    return f"{vol}/journal/" if e is None else f"{vol}/journal/{_h(e)}/"


def journal_key(vol: str, e: int, seq: int) -> str:
    return f"{vol}/journal/{_h(e)}/{_h(seq)}"


def snapshots_prefix(vol: str) -> str:
    return f"{vol}/snapshots/"


def snapshot_key(vol: str, e: int, seq: int) -> str:
    return f"{vol}/snapshots/{_h(e)}-{_h(seq)}"


def data_prefix(vol: str) -> str:
    return f"{vol}/data/"


def data_key(vol: str, h: bytes) -> str:
    x = h.hex()
    return f"{vol}/data/{x[:2]}/{x}"


def _hex16(s: str) -> int | None:
    if len(s) != 16 or any(c not in "0123456789abcdef" for c in s):
        return None
    return int(s, 16)


def parse_epoch_key(vol: str, key: str) -> int | None:
    p = epochs_prefix(vol)
    return _hex16(key[len(p):]) if key.startswith(p) else None


def parse_journal_key(vol: str, key: str) -> tuple[int, int] | None:
    p = journal_prefix(vol)
    if not key.startswith(p):
        return None
    parts = key[len(p):].split("/")
    if len(parts) != 2:
        return None
    e, s = _hex16(parts[0]), _hex16(parts[1])
    return None if e is None or s is None else (e, s)


def parse_snapshot_key(vol: str, key: str) -> tuple[int, int] | None:
    p = snapshots_prefix(vol)
    if not key.startswith(p):
        return None
    parts = key[len(p):].split("-")
    if len(parts) != 2:
        return None
    e, s = _hex16(parts[0]), _hex16(parts[1])
    return None if e is None or s is None else (e, s)


def parse_data_key(vol: str, key: str) -> bytes | None:
    p = data_prefix(vol)
    if not key.startswith(p):
        return None
    parts = key[len(p):].split("/")
    if len(parts) != 2 or len(parts[1]) != 64 or parts[0] != parts[1][:2]:
        return None
    try:
        return bytes.fromhex(parts[1])
    except ValueError:
        return None
