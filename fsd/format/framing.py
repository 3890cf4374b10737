"""Framing shared by every ferry object except data blocks (docs/format.md):

    magic (4) | version (1) | msgpack body | blake2b-256 of everything before (32)

Readers must never act on a damaged or foreign object, so `unframe` turns every
kind of damage into one exception type, `CorruptObject`, whose message names
the key and says what is wrong.
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack

VERSION = 1
MAGIC_SIZE = 4
SUM_SIZE = 32
_HEAD = MAGIC_SIZE + 1
# msgpack signals bad input with several unrelated types (FormatError,
# StackError, ExtraData are ValueErrors; an unhashable map key is a TypeError).
_MSGPACK_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


class CorruptObject(Exception):
    """An object failed its integrity or format checks; the message names it."""


def _digest(*parts: bytes | memoryview) -> bytes:
    h = hashlib.blake2b(digest_size=SUM_SIZE)
    for p in parts:
        h.update(p)
    return h.digest()


def frame(magic: bytes, body_obj: Any) -> bytes:
    """Serialize `body_obj` as a framed object of type `magic`."""
    if len(magic) != MAGIC_SIZE:
        raise ValueError(f"magic must be {MAGIC_SIZE} bytes, not {magic!r}")
    head = magic + bytes([VERSION])
    body = msgpack.packb(body_obj, use_bin_type=True)
    # join: one copy of the (possibly large) body, not one per concatenation.
    return b"".join((head, body, _digest(head, body)))


def unframe(magic: bytes, data: bytes | bytearray | memoryview, key: str) -> Any:
    """Check and decode a framed object; CorruptObject naming `key` otherwise.

    The checksum is verified before the version is trusted: a known version
    with a bad sum is damage, while an unknown version with a good sum is an
    object from a newer ferry, which deserves a different message.
    """
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    if len(mv) < _HEAD + SUM_SIZE:
        raise CorruptObject(f"{key}: truncated: {len(mv)} bytes, a framed object has at least "
                            f"{_HEAD + SUM_SIZE}")
    got_magic = bytes(mv[:MAGIC_SIZE])
    if got_magic != magic:
        raise CorruptObject(f"{key}: bad magic {got_magic!r}, expected {magic!r}")
    version = mv[MAGIC_SIZE]
    head, tail = mv[:-SUM_SIZE], mv[-SUM_SIZE:]
    sum_ok = _digest(head) == bytes(tail)
    if version != VERSION:
        hint = " (written by a newer ferry?)" if version > VERSION else ""
        damage = "" if sum_ok else "; its checksum does not match either, so it may just be damaged"
        raise CorruptObject(f"{key}: unsupported format version {version}{hint}{damage}")
    if not sum_ok:
        raise CorruptObject(f"{key}: checksum mismatch (damaged or truncated object)")
    try:
        return msgpack.unpackb(head[_HEAD:], raw=False, strict_map_key=False)
    except _MSGPACK_ERRORS as e:
        raise CorruptObject(f"{key}: body is not valid msgpack: {e}") from None


def _is(value: Any, typ: type | tuple[type, ...]) -> bool:
    """isinstance, except that a bool is not an int (msgpack keeps them apart)."""
    if isinstance(value, bool):
        types = typ if isinstance(typ, tuple) else (typ,)
        return bool in types
    return isinstance(value, typ)


def require(body: Any, key: str, fields: dict[str, type | tuple[type, ...]]) -> dict[str, Any]:
    """Check a decoded body is a map holding `fields` with those types.

    Returns the map; raises CorruptObject naming the key and the field."""
    if not isinstance(body, dict):
        raise CorruptObject(f"{key}: body is a {type(body).__name__}, expected a map")
    for name, typ in fields.items():
        if name not in body:
            raise CorruptObject(f"{key}: field {name!r} is missing")
        if not _is(body[name], typ):
            raise CorruptObject(f"{key}: field {name!r} is a {type(body[name]).__name__}, "
                                f"expected {_type_names(typ)}")
    return body


def optional(body: dict[str, Any], key: str, name: str, typ: type | tuple[type, ...]) -> Any:
    """body[name] if present and not nil (checked against `typ`), else None."""
    value = body.get(name)
    if value is not None and not _is(value, typ):
        raise CorruptObject(f"{key}: field {name!r} is a {type(value).__name__}, expected {_type_names(typ)}")
    return value


def _type_names(typ: type | tuple[type, ...]) -> str:
    types = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join(t.__name__ for t in types)
