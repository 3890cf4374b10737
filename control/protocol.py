"""Control API wire format (version 1): framing, request/response shapes, argument checks.

Why strict: the control service is reachable over the network, so every
byte from a peer is untrusted. A frame is a 4-byte big-endian length and a
msgpack map of at most 16 MiB. Anything that is not a well-formed request -
not a map, wrong version, unknown op, missing or mistyped arguments - gets
an error response and changes nothing; input that cannot be framed (a length
over the limit, EOF inside a frame) closes the connection after, where
possible, one `bad_request` answer. docs/cluster.md is the contract.
"""
from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1
MAX_FRAME = 16 << 20
MAX_UNAUTH_FRAME = 64 << 10      # until a request on the connection carried the token (control/listener.py)
HEADER = struct.Struct(">I")
ERROR_CODES = ("unauthorized", "bad_request", "unsupported_version", "not_found", "exists", "busy",
               "conflict", "unavailable", "failed", "internal")
# The message of an `unavailable` answer when the replica cannot reach its state
# store: clients try another replica (control/client.py), agents wait for it.
STORE_UNAVAILABLE = "the control state store is unreachable from this replica"
MAX_WAIT = 600.0


class ProtocolError(Exception):
    """A request we answer with an error; `id` is the request's id when known."""

    def __init__(self, code: str, message: str, req_id: int | None = None):
        super().__init__(message)
        assert code in ERROR_CODES
        self.code = code
        self.message = message
        self.id = req_id


class FrameError(Exception):
    """The byte stream cannot be framed (too long, truncated): close the connection."""


# ---------------------------------------------------------------------- frames
def encode_frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes is over the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body)) + body


class FrameBuffer:
    """Incremental decoder: feed bytes, take complete frame bodies."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        """A complete body, None when more bytes are needed, FrameError if too long."""
        if len(self._buf) < HEADER.size:
            return None
        (n,) = HEADER.unpack_from(self._buf)
        if n > self.max_frame:
            raise FrameError(f"frame length {n} is over the {self.max_frame}-byte limit")
        if len(self._buf) < HEADER.size + n:
            return None
        body = bytes(self._buf[HEADER.size:HEADER.size + n])
        del self._buf[:HEADER.size + n]
        return body

    @property
    def pending(self) -> int:
        return len(self._buf)


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def unpack(body: bytes) -> Any:
    """msgpack -> object; ProtocolError(bad_request) for anything undecodable."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_no_ext)
    except Exception as e:  # msgpack raises many types (ValueError, ExtraData, FormatError, ...)
        raise ProtocolError("bad_request", f"frame is not valid msgpack: {type(e).__name__}: {e}") from None


def printable(text: Any, limit: int = 200) -> str:
    """`text` made safe for one log line: control characters escaped (a caller's
    newline cannot forge a line), cut after `limit` characters."""
    s = text if isinstance(text, str) else repr(text)
    s = "".join(c if c.isprintable() else repr(c)[1:-1] for c in s[:limit])
    return s + ("..." if len(text if isinstance(text, str) else repr(text)) > limit else "")


class EscapeArgs(logging.Filter):
    """Escapes the string arguments of log records (strings that came from a
    peer: names, roots, reasons) the way `printable` does."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(printable(a, 1000) if isinstance(a, str) else a for a in record.args)
        return True


# ------------------------------------------------------------------- requests
@dataclass(frozen=True)
class Request:
    id: int
    op: str
    token: str
    args: dict[str, Any]


def _str(name: str, v: Any, *, max_len: int = 4096) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{name} must be a string, not {type(v).__name__}")
    if len(v) > max_len:
        raise ValueError(f"{name} is too long ({len(v)} characters, at most {max_len})")
    return v


def _opt_str(name: str, v: Any) -> str | None:
    return None if v is None else _str(name, v)


def _number(name: str, v: Any, lo: float = 0.0, hi: float = MAX_WAIT) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a number, not {v!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, not {v}")
    return float(v)


def _opt_int(name: str, v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 64:
        raise ValueError(f"{name} must be a non-negative integer or nil, not {v!r}")
    return v


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false, not {v!r}")
    return v


def _str_map(name: str, v: Any) -> dict[str, str]:
    if v is None:
        return {}
    if not isinstance(v, dict) or len(v) > 1024:
        raise ValueError(f"{name} must be a map of strings to strings")
    for k, x in v.items():
        if not isinstance(k, str) or not isinstance(x, str) or len(k) > 256 or len(x) > 4096:
            raise ValueError(f"{name} must be a map of strings to strings; {k!r}: {x!r} is not")
    return dict(v)


def _reports(name: str, v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or len(v) > 100_000:
        raise ValueError(f"{name} must be a list of {{name, in_use, epoch, upload_lag_s}} maps")
    out = []
    for i, r in enumerate(v):
        if not isinstance(r, dict):
            raise ValueError(f"{name}[{i}] must be a map")
        out.append({"name": _str(f"{name}[{i}].name", r.get("name"), max_len=256),
                    "in_use": _bool(f"{name}[{i}].in_use", r.get("in_use", False)),
                    "epoch": _opt_int(f"{name}[{i}].epoch", r.get("epoch")),
                    "upload_lag_s": None if r.get("upload_lag_s") is None else
                    _number(f"{name}[{i}].upload_lag_s", r.get("upload_lag_s"), 0.0, 1e9),
                    "last_gc": _last_gc(f"{name}[{i}].last_gc", r.get("last_gc"))})
    return out


def _last_gc(name: str, v: Any) -> dict[str, Any] | None:
    """The owner's last GC pass: {at (wall seconds), freed_bytes, objects, live_bytes}, or nil."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ValueError(f"{name} must be a map or nil")
    out: dict[str, Any] = {"at": _number(f"{name}.at", v.get("at"), 0.0, 1e11)}
    for k in ("freed_bytes", "objects", "live_bytes"):
        out[k] = _count(f"{name}.{k}", v.get(k, 0))
    err = v.get("error")
    out["error"] = None if err is None else _str(f"{name}.error", err, max_len=1024)
    return out


def _position(name: str, v: Any) -> list[int] | None:
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 2:
        raise ValueError(f"{name} must be [epoch, seq] or nil")
    return [_count(f"{name}[0]", v[0]), _count(f"{name}[1]", v[1])]


def _count(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 63:
        raise ValueError(f"{name} must be a non-negative integer, not {v!r}")
    return v


def _progress(name: str, v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or len(v) > 100_000:
        raise ValueError(f"{name} must be a list of {{root, deleted, total, bytes}} maps")
    out = []
    for i, r in enumerate(v):
        if not isinstance(r, dict):
            raise ValueError(f"{name}[{i}] must be a map")
        out.append({"root": _str(f"{name}[{i}].root", r.get("root"), max_len=512),
                    **{k: _count(f"{name}[{i}].{k}", r.get(k, 0)) for k in ("deleted", "total", "bytes")}})
    return out


def _jobs(name: str, v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list) or len(v) > 100_000:
        raise ValueError(f"{name} must be a list of {{name, root}} maps")
    out = []
    for i, r in enumerate(v):
        if not isinstance(r, dict):
            raise ValueError(f"{name}[{i}] must be a map")
        out.append({"name": _str(f"{name}[{i}].name", r.get("name"), max_len=256),
                    "root": _opt_str(f"{name}[{i}].root", r.get("root"))})
    return out


def _any_map(name: str, v: Any) -> dict[str, Any]:
    """A map whose entries the op checks itself (control/recover.py)."""
    if not isinstance(v, dict):
        raise ValueError(f"{name} must be a map")
    return v


Checker = Callable[[str, Any], Any]   # (argument name, value) -> the value checked, or ValueError


def _req(f: Checker) -> Checker:
    def check(name: str, v: Any) -> Any:
        if v is None:
            raise ValueError(f"argument {name!r} is required")
        return f(name, v)
    return check


def _default(f: Checker, default: Any) -> Checker:
    def check(name: str, v: Any) -> Any:
        return default if v is None else f(name, v)
    return check


# op -> {arg: checker(name, value)}; a missing arg arrives as None.
OPS: dict[str, dict[str, Any]] = {
    "ping": {},
    "volume.create": {"name": _req(_str), "options": _str_map, "labels": _str_map,
                      "wait": _default(_number, 120.0)},
    "volume.get": {"name": _req(_str)},
    "volume.list": {},
    "volume.remove": {"name": _req(_str), "host_id": _default(_str, ""), "wait": _default(_number, 0.0)},
    "volume.move": {"name": _req(_str), "to": _req(_str), "wait": _default(_number, 30.0)},
    "volume.resize": {"name": _req(_str), "size": _req(_str), "wait": _default(_number, 120.0)},
    "host.register": {"host_id": _req(_str), "address": _default(_str, ""), "version": _default(_str, "")},
    "host.heartbeat": {"host_id": _req(_str), "volumes": _default(_reports, []),
                       "removals": _default(_progress, [])},
    "host.list": {},
    "host.watch": {"host_id": _req(_str), "timeout": _default(_number, 30.0), "running": _default(_jobs, []),
                   "snap_after": _default(_count, 0)},
    "lease.acquire": {"volume": _req(_str), "host_id": _req(_str), "wait": _default(_number, 0.0),
                      "in_use_wait": _default(_number, 0.0)},
    "lease.release": {"volume": _req(_str), "host_id": _req(_str), "epoch": _opt_int},
    "lease.refuse_move": {"volume": _req(_str), "host_id": _req(_str)},
    "status": {},
    "removal.marked": {"name": _req(_str), "host_id": _req(_str), "root": _default(_str, "")},
    "removal.aborted": {"name": _req(_str), "host_id": _req(_str), "reason": _default(_str, "")},
    "removal.done": {"root": _req(_str), "host_id": _req(_str)},
    "removal.list": {},
    "snapshot.create": {"volume": _req(_str), "snap": _req(_str), "wait": _default(_number, 120.0)},
    "snapshot.rm": {"volume": _req(_str), "snap": _req(_str), "wait": _default(_number, 120.0)},
    "snapshot.done": {"volume": _req(_str), "snap": _req(_str), "host_id": _req(_str), "seq": _req(_count),
                      "error": _opt_str, "position": _position, "note": _opt_str},
    "volume.recover": {"name": _req(_str), "options": _str_map,
                       "created": _default(lambda n, v: _number(n, v, 0.0, 1e11), 0.0),
                       "snapshots": _default(_any_map, {})},
    "removal.recover": {"name": _req(_str), "root": _req(lambda n, v: _str(n, v, max_len=512))},
}


def parse_request(body: bytes) -> Request:
    """Frame body -> Request. ProtocolError (with the id when readable) otherwise.
    Order: shape, version, then op and args (the token is checked by the server
    between version and op, see `check_args`)."""
    msg = unpack(body)
    if not isinstance(msg, dict):
        raise ProtocolError("bad_request", f"a request must be a msgpack map, not {type(msg).__name__}")
    rid = msg.get("id")
    if isinstance(rid, bool) or not isinstance(rid, int) or not 0 <= rid < 2 ** 63:
        raise ProtocolError("bad_request", "request field 'id' must be a non-negative integer")
    v = msg.get("v")
    if v != VERSION:
        raise ProtocolError("unsupported_version",
                            f"control API version {v!r} is not supported; this server speaks version "
                            f"{VERSION}: upgrade the older of client and server", rid)
    token = msg.get("token")
    if not isinstance(token, str):
        token = ""
    op = msg.get("op")
    if not isinstance(op, str):
        raise ProtocolError("bad_request", "request field 'op' must be a string", rid)
    args = msg.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError("bad_request", "request field 'args' must be a map", rid)
    return Request(id=rid, op=op, token=token, args=args)


def check_args(req: Request) -> dict[str, Any]:
    """Validated arguments of a (authenticated) request, or ProtocolError(bad_request)."""
    spec = OPS.get(req.op)
    if spec is None:
        raise ProtocolError("bad_request", f"unknown op {req.op!r}; known: {', '.join(sorted(OPS))}", req.id)
    extra = sorted(set(req.args) - set(spec))
    if extra:
        raise ProtocolError("bad_request", f"{req.op}: unknown argument(s) {', '.join(map(str, extra))}; "
                                           f"expected: {', '.join(spec) or 'none'}", req.id)
    out = {}
    for name, check in spec.items():
        try:
            out[name] = check(name, req.args.get(name))
        except ValueError as e:
            raise ProtocolError("bad_request", f"{req.op}: {e}", req.id) from None
    return out


def make_request(req_id: int, op: str, args: dict[str, Any], token: str) -> dict[str, Any]:
    return {"v": VERSION, "id": req_id, "token": token, "op": op, "args": args}


def ok_response(req_id: int | None, result: Any) -> dict[str, Any]:
    return {"v": VERSION, "id": req_id, "ok": True, "result": result}


def error_response(req_id: int | None, code: str, message: str) -> dict[str, Any]:
    return {"v": VERSION, "id": req_id, "ok": False, "error": {"code": code, "message": message}}
