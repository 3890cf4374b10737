"""Docker volume plugin protocol: parsing and validating requests, shaping replies. Pure.

Why pure: the plugin socket is an input boundary (SPEC §2.5). Every request
body is checked here - JSON, object, field types, volume name, options -
before anything acts on it, so a bad request gets an `{"Err": "..."}` that
says what is wrong and changes nothing. No I/O: the HTTP server
(`agent/http.py`) feeds bytes in, the service (`agent/service.py`) acts on
the typed requests that come out.

Docker's protocol: https://docs.docker.com/engine/extend/plugins_volume/
(POST /Plugin.Activate, /VolumeDriver.Create|Remove|Mount|Unmount|Path|Get|
List|Capabilities, JSON bodies, `Err` is "" on success).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from control.validate import validate_volume_name, validate_volume_options

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20           # Docker's bodies are tiny; anything bigger is not Docker
MAX_ID = 256                 # Docker mount IDs are 64 hex characters


class BadRequest(Exception):
    """A request we answer with `{"Err": message}` without acting on it."""


@dataclass(frozen=True)
class Activate:
    pass


@dataclass(frozen=True)
class Capabilities:
    pass


@dataclass(frozen=True)
class ListVolumes:
    pass


@dataclass(frozen=True)
class Create:
    name: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Remove:
    name: str


@dataclass(frozen=True)
class Path:
    name: str


@dataclass(frozen=True)
class Get:
    name: str


@dataclass(frozen=True)
class Mount:
    name: str
    id: str


@dataclass(frozen=True)
class Unmount:
    name: str
    id: str


Request = Activate | Capabilities | ListVolumes | Create | Remove | Path | Get | Mount | Unmount

# endpoint -> (request type, fields it needs beyond nothing)
ENDPOINTS: dict[str, Callable[..., Request]] = {
    "/Plugin.Activate": Activate,
    "/VolumeDriver.Capabilities": Capabilities,
    "/VolumeDriver.List": ListVolumes,
    "/VolumeDriver.Create": Create,
    "/VolumeDriver.Remove": Remove,
    "/VolumeDriver.Path": Path,
    "/VolumeDriver.Get": Get,
    "/VolumeDriver.Mount": Mount,
    "/VolumeDriver.Unmount": Unmount,
}
_NO_BODY = (Activate, Capabilities, ListVolumes)


def _decode(body: bytes) -> Any:
    if len(body) > MAX_BODY:
        raise BadRequest(f"request body of {len(body)} bytes is too large (at most {MAX_BODY})")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"request body is not UTF-8 text: {e}") from None
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply to be a plugin request") from None


def _name(obj: dict[str, Any]) -> str:
    if "Name" not in obj or obj["Name"] is None:
        raise BadRequest("field 'Name' (the volume name) is required")
    name = obj["Name"]
    if not isinstance(name, str):
        raise BadRequest(f"field 'Name' must be a string, not {_jtype(name)}")
    try:
        validate_volume_name(name)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    return name


def _id(obj: dict[str, Any]) -> str:
    mid = obj.get("ID")
    if mid is None:
        raise BadRequest("field 'ID' (the mount ID) is required")
    if not isinstance(mid, str):
        raise BadRequest(f"field 'ID' must be a string, not {_jtype(mid)}")
    if not mid or len(mid) > MAX_ID or not mid.isprintable():
        raise BadRequest(f"field 'ID' must be 1-{MAX_ID} printable characters")
    return mid


def _opts(name: str, obj: dict[str, Any]) -> dict[str, str]:
    opts = obj.get("Opts")
    if opts is None:
        return {}
    if not isinstance(opts, dict):
        raise BadRequest(f"field 'Opts' must be an object of strings, not {_jtype(opts)}")
    for k, v in opts.items():
        if not isinstance(v, str):
            raise BadRequest(f"option {k!r} must be a string, not {_jtype(v)}")
    try:
        return validate_volume_options(name, dict(opts))
    except ValueError as e:
        raise BadRequest(str(e)) from None


def _jtype(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def parse_request(path: str, body: bytes) -> Request:
    """(URL path, body bytes) -> typed request, or BadRequest saying what is wrong."""
    kind = ENDPOINTS.get(path)
    if kind is None:
        raise BadRequest(f"unknown endpoint {path!r}; this plugin serves "
                         + ", ".join(sorted(ENDPOINTS)))
    obj = _decode(body)
    if kind in _NO_BODY:
        if obj is not None and not isinstance(obj, dict):
            raise BadRequest(f"request body must be a JSON object, not {_jtype(obj)}")
        return kind()
    if not isinstance(obj, dict):
        raise BadRequest(f"request body must be a JSON object with a 'Name', not {_jtype(obj)}")
    name = _name(obj)
    if kind is Create:
        return Create(name=name, options=_opts(name, obj))
    if kind in (Mount, Unmount):
        return kind(name=name, id=_id(obj))
    return kind(name=name)


# ---------------------------------------------------------------- replies
def err(message: str) -> dict[str, Any]:
    return {"Err": message or "failed (no details)"}


def ok(**fields: Any) -> dict[str, Any]:
    return {**fields, "Err": ""}


def activate_reply() -> dict[str, Any]:
    return {"Implements": ["VolumeDriver"]}


def capabilities_reply() -> dict[str, Any]:
    return {"Capabilities": {"Scope": "global"}}


def rfc3339(ts: float) -> str:
    """A wall-clock time as Docker reads a volume's CreatedAt (Go's time.Time in JSON)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def volume_entry(name: str, mountpoint: str | None, status: dict[str, Any] | None = None,
                 created: float | None = None) -> dict[str, Any]:
    """One volume in a Get or List answer. Without `created`, Docker shows
    CreatedAt as 0001-01-01T00:00:00Z; `status` is what `docker volume
    inspect` shows under Status."""
    v: dict[str, Any] = {"Name": name, "Mountpoint": mountpoint or ""}
    if created is not None:
        v["CreatedAt"] = rfc3339(created)
    if status is not None:
        v["Status"] = status
    return v
