"""Metadata journal records (docs/format.md, "Metadata records").

A record is a plain Python list whose first element is its type. Lists, not
objects, because records are created on every namespace operation and
msgpack-encoded as they are: no conversion step, no per-record class.

Records carry full state, never deltas, so applying one twice is harmless.
This module only knows their shape; what they mean lives in `state.py`.
Everything read from storage goes through `decode_records`, which turns any
malformed input into `RecordError` so that callers have one thing to catch.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

INODE = 1
INODE_DEL = 2
DENT = 3
DENT_DEL = 4
BLOCK = 5
TRUNC = 6
XATTR = 7
XATTR_DEL = 8
PATCH = 9
HOLE = 10          # format 4: blocks [index, index+count) of a file become holes (a punched range)

NAMES = {INODE: "INODE", INODE_DEL: "INODE_DEL", DENT: "DENT", DENT_DEL: "DENT_DEL",
         BLOCK: "BLOCK", TRUNC: "TRUNC", XATTR: "XATTR", XATTR_DEL: "XATTR_DEL", PATCH: "PATCH",
         HOLE: "HOLE"}

# Positions inside an INODE record, so that code building a changed record
# from `Inode.to_record()` does not scatter magic numbers.
I_INO, I_MODE, I_UID, I_GID, I_NLINK, I_SIZE = 1, 2, 3, 4, 5, 6
I_ATIME, I_MTIME, I_CTIME, I_RDEV, I_TARGET = 7, 8, 9, 10, 11

# A journal record as msgpack carries it: [type, field, ...] (docs/format.md).
Record = list[Any]

HASH_LEN = 32          # blake2b-256
NAME_MAX = 255         # directory entry and xattr name length limit
XATTR_SIZE_MAX = 65536
PATCH_DATA_MAX = 16 << 20   # the largest block size

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_S64_MIN, _S64_MAX = -(1 << 63), (1 << 63) - 1


class RecordError(ValueError):
    """A record (or a list of them) is not well-formed."""


# ---------------------------------------------------------------- checkers
# Each returns None when the value is fine, else a short description of
# what was expected. `type(x) is int` on purpose: bool is an int subclass and
# must not pass as one.

def _int_in(lo: int, hi: int, what: str) -> Callable[[Any], str | None]:
    def check(x: Any) -> str | None:
        if type(x) is not int or not lo <= x <= hi:
            return what
        return None
    return check


_ino = _int_in(1, _U64, "an inode number (int >= 1)")
_u32 = _int_in(0, _U32, "an int in 0..2**32-1")
_u64 = _int_in(0, _U64, "an int >= 0")
_s64 = _int_in(_S64_MIN, _S64_MAX, "a 64-bit int")
_cookie = _int_in(1, _S64_MAX, "a cookie (int >= 1)")


def _dent_name(x: Any) -> str | None:
    if type(x) is not bytes:
        return "bytes"
    if not 0 < len(x) <= NAME_MAX or b"/" in x or b"\0" in x or x in (b".", b".."):
        return "a valid file name (1-255 bytes, no '/' or NUL, not '.' or '..')"
    return None


def _xattr_name(x: Any) -> str | None:
    if type(x) is not bytes or not 0 < len(x) <= NAME_MAX:
        return "an xattr name (1-255 bytes)"
    return None


def _xattr_value(x: Any) -> str | None:
    if type(x) is not bytes or len(x) > XATTR_SIZE_MAX:
        return "an xattr value (bytes, at most 64 KiB)"
    return None


def _hash(x: Any) -> str | None:
    if type(x) is not bytes or len(x) != HASH_LEN:
        return "a 32-byte hash"
    return None


def _patch_data(x: Any) -> str | None:
    if type(x) is not bytes or not 0 < len(x) <= PATCH_DATA_MAX:
        return f"bytes of length 1..{PATCH_DATA_MAX}"
    return None


def _target(x: Any) -> str | None:
    if x is not None and type(x) is not bytes:
        return "bytes or nil"
    return None


_Fields = tuple[tuple[str, Callable[[Any], str | None]], ...]

_SHAPES: dict[int, _Fields] = {
    INODE: (("ino", _ino), ("mode", _u32), ("uid", _u32), ("gid", _u32), ("nlink", _u32),
            ("size", _u64), ("atime_ns", _s64), ("mtime_ns", _s64), ("ctime_ns", _s64),
            ("rdev", _u64), ("target", _target)),
    INODE_DEL: (("ino", _ino),),
    DENT: (("parent", _ino), ("name", _dent_name), ("ino", _ino), ("cookie", _cookie)),
    DENT_DEL: (("parent", _ino), ("name", _dent_name)),
    BLOCK: (("ino", _ino), ("index", _u64), ("hash", _hash), ("length", _u64)),
    TRUNC: (("ino", _ino), ("size", _u64)),
    XATTR: (("ino", _ino), ("name", _xattr_name), ("value", _xattr_value)),
    XATTR_DEL: (("ino", _ino), ("name", _xattr_name)),
    PATCH: (("ino", _ino), ("index", _u64), ("offset", _u32), ("data", _patch_data)),
    HOLE: (("ino", _ino), ("index", _u64), ("count", _int_in(1, _U64, "a block count (int >= 1)"))),
}


# Trailing fields a record may carry or omit. BLOCK's `epoch` (format 2) is
# the epoch whose data key holds the object; without it the object has
# format 1's untagged key (epoch 0). BLOCK's `src` (format 3) says under
# which volume's root the object is: 0 or absent, this volume's own; k >= 1,
# the k-th entry of the superblock's `origins` (a clone sharing its
# origin's data objects).
MAX_ORIGINS = 255
_OPTIONAL: dict[int, _Fields] = {
    BLOCK: (("epoch", _u64), ("src", _int_in(1, MAX_ORIGINS, f"an origin index (1..{MAX_ORIGINS})"))),
}


def validate_record(rec: Any) -> None:
    """Raise RecordError naming the first problem of `rec`, if any."""
    if type(rec) is not list:
        raise RecordError(f"record must be an array, got {type(rec).__name__}")
    if not rec:
        raise RecordError("record is an empty array")
    t = rec[0]
    fields = _SHAPES.get(t) if type(t) is int else None
    if fields is None:
        raise RecordError(f"unknown record type {t!r}")
    name = NAMES[t]
    optional = _OPTIONAL.get(t, ())
    if not len(fields) + 1 <= len(rec) <= len(fields) + len(optional) + 1:
        n = len(fields) + 1
        expected = f"{n}" if not optional else f"{n} to {n + len(optional)}"
        raise RecordError(f"{name} record has {len(rec)} elements, expected {expected}")
    for i, (field, check) in enumerate((fields + optional)[:len(rec) - 1], 1):
        wanted = check(rec[i])
        if wanted is not None:
            raise RecordError(f"{name} record: element {i} ({field}) must be {wanted}, "
                              f"got {_show(rec[i])}")


def _show(x: Any) -> str:
    r = repr(x)
    return f"{type(x).__name__} {r if len(r) <= 40 else r[:37] + '...'}"


def encode_records(recs: list[Record]) -> bytes:
    """msgpack of a list of records (not validated: we only encode our own)."""
    try:
        data: bytes = msgpack.packb(recs, use_bin_type=True)
        return data
    except (TypeError, ValueError, OverflowError) as e:
        raise RecordError(f"cannot encode records: {e}") from None


def decode_records(data: bytes) -> list[Record]:
    """Parse and validate a msgpack list of records; any flaw is RecordError."""
    try:
        recs = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)
    except Exception as e:  # msgpack raises many types for garbage; callers get one
        raise RecordError(f"records are not valid msgpack: {type(e).__name__}: {e}") from None
    if type(recs) is not list:
        raise RecordError(f"records must be an array, got {type(recs).__name__}")
    for i, rec in enumerate(recs):
        try:
            validate_record(rec)
        except RecordError as e:
            raise RecordError(f"record #{i}: {e}") from None
    return recs
