"""Mount options (`-o k=v`): parsing and validation, pure.

Every option has a default a user would pick; unknown or malformed ones are
refused with the list of known ones, before anything is touched. The options
are one table, `MountOptions`: each field carries its default, its parser and
its help text, so the three cannot drift apart.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


MAX_SIZE = 1 << 60          # 1 EiB: more than ext4, XFS or any statfs here can describe
MAX_DURATION = 100 * 365 * 86400.0


def parse_size(text: str) -> int:
    """'4096', '64k', '1M', '10GiB' -> bytes (binary units), at most 1 EiB."""
    m = _SIZE_RE.match(text) if len(text) <= 64 else None
    if not m:
        raise ValueError(f"{text[:64]!r} is not a size (examples: 4096, 64k, 256M, 10G)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not value <= MAX_SIZE:
        raise ValueError(f"size {text!r} is too large: at most 1024P (1 EiB)")
    return int(value)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> float:
    """'0', '90', '90s', '10m', '2h', '1d' -> seconds (a bare number is seconds)."""
    m = _DURATION_RE.match(text) if len(text) <= 64 else None
    if not m:
        raise ValueError(f"{text[:64]!r} is not a duration (examples: 0, 90s, 10m, 2h, 1d)")
    unit = m.group(2).lower() if m.group(2) else None
    value = float(m.group(1)) * _SECONDS[unit]
    if not value <= MAX_DURATION:
        raise ValueError(f"duration {text!r} is too long: at most 100 years")
    return value


DEFAULT_SIZE_LIMIT = 1 << 50      # what df shows for a files volume without -o size=

Parser = Callable[[str, str], Any]     # (option name, text) -> value; ValueError says what is wrong


def _choice(*values: str) -> Parser:
    def parse(name: str, text: str) -> str:
        if text not in values:
            raise ValueError(f"{name} must be " + " or ".join(repr(v) for v in values) + f", not {text!r}")
        return text
    return parse


def _on_off(name: str, text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"{name} must be 'on' or 'off', not {text!r}")
    return text == "on"


def _seconds(lo: float, hi: float) -> Parser:
    def parse(name: str, text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, not {text!r}") from None
        if not lo <= v <= hi:
            raise ValueError(f"{name} must be between {lo:g} and {hi:g} seconds")
        return v
    return parse


def _size(lo: int = 0, hi: int | None = None, *, hi_text: str = "") -> Parser:
    def parse(name: str, text: str) -> int:
        v = parse_size(text)
        if v < lo:
            raise ValueError(f"{name} must be at least 1M")
        if hi is not None and v > hi:
            raise ValueError(f"{name} must be at most {hi_text}")
        return v
    return parse


def _count(lo: int) -> Parser:
    def parse(name: str, text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"{name} must be a whole number") from None
        if n < lo:
            raise ValueError(f"{name} must be at least {lo}")
        return n
    return parse


def _duration(lo: float) -> Parser:
    def parse(name: str, text: str) -> float:
        try:
            d = parse_duration(text)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if not lo <= d <= 30 * 86400:
            raise ValueError(f"{name} must be between {lo:g}s and 30d, not {text!r}")
        return d
    return parse


def _opt(default: Any, parse: Parser, help: str) -> Any:
    """One option: its default, how `-o name=text` is parsed and checked, its help."""
    return field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True)
class MountOptions:
    """The one table of mount options: each field is an option, with its default,
    its parser and its help text; KNOWN and parse_mount_options come from it."""

    durability: str = _opt("remote", _choice("remote", "local"),
                           "remote|local (default remote: fsync returns once data is in object storage)")
    commit_interval: float = _opt(5.0, _seconds(0.01, 3600), "seconds between background commits (default 5)")
    cache_size: int = _opt(10 << 30, _size(1 << 20), "size of the local block cache (default 10G)")
    dirty_limit: int = _opt(256 << 20, _size(1 << 20), "unuploaded data at which writers wait (default 256M)")
    # files: the size limit statfs reports (None: DEFAULT_SIZE_LIMIT); layout=block:
    # the image is grown to this at mount when it is smaller (`ferry volume resize`)
    size: int | None = _opt(None, _size(1 << 20),
                            "volume size limit reported by df (default 1P); for a layout=block volume, the image "
                            "size: a larger size than the image's grows it (and its filesystem) at mount")
    snapshot_every: int = _opt(512, _count(1), "journal segments between metadata snapshots (default 512)")
    readahead: int = _opt(4 << 20, _size(0, 256 << 20, hi_text="256M"),
                          "kernel read-ahead window for sequential reads (default 4M; 0 keeps the kernel's 128k)")
    gc: bool = _opt(True, _on_off, "on|off: the owning daemon deletes garbage in the background (default on)")
    gc_interval: float = _opt(600.0, _duration(0.1), "time between background GC passes (default 10m)")
    gc_grace: float = _opt(300.0, _duration(0.0),
                           "unreferenced objects younger than this are kept by GC (default 5m)")
    scrub_interval: float = _opt(7 * 86400.0, _duration(0.0),
                                 "how often the owning daemon re-reads every live data object and verifies its "
                                 "checksum, so damage in the store is found before a reader meets it (default 7d; "
                                 "0: never)")
    scrub_rate: int = _opt(8 << 20, _size(64 << 10),
                           "bytes per second the scrub reads at most (default 8M)")
    image_only: bool = _opt(False, _on_off,
                            "on|off: for a layout=block volume, mount only ferry's filesystem holding the file "
                            "`image` (to check it with e2fsck/xfs_repair or copy it); the kernel filesystem is not "
                            "mounted (default off)")
    trim_interval: float = _opt(3600.0, _duration(0.0),
                                "for a layout=block volume, how often the daemon runs fstrim so deleted files' "
                                "space becomes garbage GC frees (default 1h; 0: never)")
    discard: bool = _opt(False, _on_off,
                         "on|off: for a layout=block volume, mount the kernel filesystem with -o discard (every "
                         "delete punches at once; costs a commit per delete) (default off: fstrim every "
                         "trim_interval)")
    loop_direct_io: bool = _opt(False, _on_off,
                                "on|off: for a layout=block volume, attach the image with direct I/O: one copy of "
                                "the data in memory instead of two, but every page ext4 writes becomes its own "
                                "ferry write (4 KiB random writes ~6x slower, sequential writes ~2x) (default off)")


KNOWN = {f.name: f.metadata["help"] for f in fields(MountOptions)}


def known_options_text() -> str:
    return "; ".join(f"{k}={v}" for k, v in KNOWN.items())


def parse_kv(items: list[str]) -> dict[str, str]:
    """['a=1', 'b=2,c=3'] -> {'a': '1', 'b': '2', 'c': '3'} (comma lists allowed, like mount -o)."""
    out: dict[str, str] = {}
    for item in items:
        for part in item.split(","):
            if not part:
                continue
            if "=" not in part:
                raise ValueError(f"option {part!r} must be key=value")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def parse_mount_options(kv: dict[str, str]) -> MountOptions:
    unknown = sorted(set(kv) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown mount option(s) {', '.join(unknown)}; known: {known_options_text()}")
    vals = {f.name: f.metadata["parse"](f.name, kv[f.name]) for f in fields(MountOptions) if f.name in kv}
    return MountOptions(**vals)
