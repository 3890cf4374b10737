"""Key layout of a volume in the object store (docs/format.md). Pure.

A volume's objects live under its *root*: `NAME/UUID` for format 2 (one
root per incarnation of a name, so a name that is removed and created
again starts from nothing), `NAME` for format 1. The functions below take
the root; `incarnation_*` keys sit under the bare name and say which root
is the name's current volume.

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
_UUID_RE = re.compile(r"[0-9a-f]{32}")
_DATA_NAME_RE = re.compile(r"([0-9a-f]{64})(?:\.([0-9a-f]{16}))?")
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


def volume_root(name: str, uuid: str) -> str:
    """Key prefix of one incarnation (format 2) of volume `name`."""
    if not _UUID_RE.fullmatch(uuid):
        raise ValueError(f"volume uuid {uuid!r} is not 32 lower-case hex digits")
    return f"{name}/{uuid}"


def name_prefix(name: str) -> str:
    """Every object of every incarnation of `name` (and of a format-1 volume)."""
    return f"{name}/"


def incarnations_prefix(name: str) -> str:
    return f"{name}/incarnations/"


def incarnation_key(name: str, n: int) -> str:
    return f"{name}/incarnations/{_h(n)}"


def parse_incarnation_key(name: str, key: str) -> int | None:
    p = incarnations_prefix(name)
    return _hex16(key[len(p):]) if key.startswith(p) else None


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


PIN_KINDS = ("snap", "clone")


def pins_prefix(vol: str, kind: str | None = None) -> str:
    """Pins: what keeps a metadata snapshot and everything it references
    alive against GC (user snapshots: `pins/snap/NAME`; clones made from
    the volume: `pins/clone/CLONE_UUID`)."""
    return f"{vol}/pins/" if kind is None else f"{vol}/pins/{kind}/"


def pin_key(vol: str, kind: str, name: str) -> str:
    if kind not in PIN_KINDS:
        raise ValueError(f"unknown pin kind {kind!r}")
    validate_snapshot_name(name)
    return f"{vol}/pins/{kind}/{name}"


def parse_pin_key(vol: str, key: str) -> tuple[str, str] | None:
    """(kind, name) of a pin key of `vol`, None for anything else."""
    p = pins_prefix(vol)
    if not key.startswith(p):
        return None
    kind, sep, name = key[len(p):].partition("/")
    if not sep or kind not in PIN_KINDS:
        return None
    try:
        validate_snapshot_name(name)
    except ValueError:
        return None
    return kind, name


def validate_snapshot_name(name: str) -> None:
    """A snapshot name follows the volume name rules (it is a key component too)."""
    try:
        validate_volume_name(name)
    except ValueError as e:
        raise ValueError(str(e).replace("volume name", "snapshot name")) from None


def gc_prefix(vol: str) -> str:
    """GC reports (`gc/last`) of the volume."""
    return f"{vol}/gc/"


def gc_report_key(vol: str) -> str:
    return f"{vol}/gc/last"


def data_prefix(vol: str) -> str:
    return f"{vol}/data/"


def data_key(vol: str, hash_bytes: bytes, epoch: int = 0) -> str:
    """Key of the data object whose raw content has blake2b-256 `hash_bytes`,
    uploaded in `epoch` (`HASH.EPOCH`). Epoch 0 is format 1's untagged key
    (`HASH`): objects written before epochs were part of data keys.

    The epoch in the key is what makes GC safe against writers it cannot
    see (docs/format.md, "Garbage collection"): a writer only ever uploads
    under its own epoch, so an object of a sealed epoch that no retained
    state references can never be referenced again."""
    if len(hash_bytes) != HASH_SIZE:
        raise ValueError(f"a block hash is {HASH_SIZE} bytes, not {len(hash_bytes)}")
    x = hash_bytes.hex()
    return f"{vol}/data/{x[:2]}/{x}" + (f".{_h(epoch)}" if epoch else "")


def parse_data_key(vol: str, key: str) -> tuple[bytes, int] | None:
    """(hash, epoch) named by a data key of `vol` (epoch 0: untagged, format
    1), None for anything else."""
    p = data_prefix(vol)
    if not key.startswith(p):
        return None
    fan, sep, x = key[len(p):].partition("/")
    m = _DATA_NAME_RE.fullmatch(x) if sep else None
    if m is None or fan != x[:2]:
        return None
    e = int(m.group(2), 16) if m.group(2) else 0
    if m.group(2) and e == 0:
        return None           # epoch 0 is spelled without a suffix
    return bytes.fromhex(m.group(1)), e


SEALED_KINDS = ("journal", "snapshots", "pins", "data")


def sealed_root(key: str) -> str | None:
    """The format-2 root (`NAME/UUID`) of `key` when it names an object an encrypted
    volume seals (journal segments and seals, metadata snapshots, pins, data);
    None for every other key: superblocks (they hold the wrapped data key),
    epoch claims, GC reports, incarnation records, anything outside a volume."""
    parts = key.split("/", 3)
    if len(parts) == 4 and parts[2] in SEALED_KINDS and _UUID_RE.fullmatch(parts[1]):
        return f"{parts[0]}/{parts[1]}"
    return None
