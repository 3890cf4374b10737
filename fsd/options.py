"""Mount options (`-o k=v`): parsing and validation, pure.

Every option has a default a user would pick; unknown or malformed ones are
refused with the list of known ones, before anything is touched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class MountOptions:
    durability: str = "remote"        # remote | local  (SPEC §2.1)
    commit_interval: float = 5.0      # seconds between background commits
    cache_size: int = 10 << 30        # bytes of clean blocks kept in the cache dir
    dirty_limit: int = 256 << 20      # dirty + in-flight bytes at which writers wait
    # files: the size limit statfs reports (None: DEFAULT_SIZE_LIMIT); layout=block:
    # the image is grown to this at mount when it is smaller (`ferry volume resize`)
    size: int | None = None
    snapshot_every: int = 512         # segments between metadata snapshots
    readahead: int = 4 << 20          # kernel read-ahead window of the mount (0: kernel default)
    gc: bool = True                   # the owner collects garbage in the background
    gc_interval: float = 600.0        # seconds between background GC passes
    gc_grace: float = 300.0           # unreferenced objects younger than this survive a pass
    image_only: bool = False          # block volumes: mount ferry's filesystem (holding `image`) only
    trim_interval: float = 3600.0     # block volumes: seconds between fstrim runs (0: never)
    discard: bool = False             # block volumes: mount the kernel filesystem with -o discard
    loop_direct_io: bool = False      # block volumes: the loop device bypasses the ferry mount's page cache


KNOWN = {
    "durability": "remote|local (default remote: fsync returns once data is in object storage)",
    "commit_interval": "seconds between background commits (default 5)",
    "cache_size": "size of the local block cache (default 10G)",
    "dirty_limit": "unuploaded data at which writers wait (default 256M)",
    "size": "volume size limit reported by df (default 1P); for a layout=block volume, the image size: a "
            "larger size than the image's grows it (and its filesystem) at mount",
    "snapshot_every": "journal segments between metadata snapshots (default 512)",
    "readahead": "kernel read-ahead window for sequential reads (default 4M; 0 keeps the kernel's 128k)",
    "gc": "on|off: the owning daemon deletes garbage in the background (default on)",
    "gc_interval": "time between background GC passes (default 10m)",
    "gc_grace": "unreferenced objects younger than this are kept by GC (default 5m)",
    "image_only": "on|off: for a layout=block volume, mount only ferry's filesystem holding the file `image` "
                  "(to check it with e2fsck/xfs_repair or copy it); the kernel filesystem is not mounted "
                  "(default off)",
    "trim_interval": "for a layout=block volume, how often the daemon runs fstrim so deleted files' space "
                     "becomes garbage GC frees (default 1h; 0: never)",
    "discard": "on|off: for a layout=block volume, mount the kernel filesystem with -o discard (every delete "
               "punches at once; costs a commit per delete) (default off: fstrim every trim_interval)",
    "loop_direct_io": "on|off: for a layout=block volume, attach the image with direct I/O: one copy of the "
                      "data in memory instead of two, but every page ext4 writes becomes its own ferry write "
                      "(4 KiB random writes ~6x slower, sequential writes ~2x) (default off)",
}


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
    o = MountOptions()
    vals: dict[str, object] = {}
    if "durability" in kv:
        if kv["durability"] not in ("remote", "local"):
            raise ValueError(f"durability must be 'remote' or 'local', not {kv['durability']!r}")
        vals["durability"] = kv["durability"]
    if "commit_interval" in kv:
        try:
            ci = float(kv["commit_interval"])
        except ValueError:
            raise ValueError(f"commit_interval must be a number of seconds, not {kv['commit_interval']!r}") from None
        if not 0.01 <= ci <= 3600:
            raise ValueError("commit_interval must be between 0.01 and 3600 seconds")
        vals["commit_interval"] = ci
    for k in ("cache_size", "dirty_limit", "size"):
        if k in kv:
            v = parse_size(kv[k])
            if v < (1 << 20):
                raise ValueError(f"{k} must be at least 1M")
            vals[k] = v
    if "readahead" in kv:
        ra = parse_size(kv["readahead"])
        if ra > (256 << 20):
            raise ValueError("readahead must be at most 256M")
        vals["readahead"] = ra
    if "snapshot_every" in kv:
        try:
            n = int(kv["snapshot_every"])
        except ValueError:
            raise ValueError("snapshot_every must be a whole number") from None
        if n < 1:
            raise ValueError("snapshot_every must be at least 1")
        vals["snapshot_every"] = n
    for k in ("gc", "image_only", "discard", "loop_direct_io"):
        if k in kv:
            if kv[k] not in ("on", "off"):
                raise ValueError(f"{k} must be 'on' or 'off', not {kv[k]!r}")
            vals[k] = kv[k] == "on"
    for k, lo in (("gc_interval", 0.1), ("gc_grace", 0.0), ("trim_interval", 0.0)):
        if k in kv:
            try:
                d = parse_duration(kv[k])
            except ValueError as e:
                raise ValueError(f"{k}: {e}") from None
            if not lo <= d <= 30 * 86400:
                raise ValueError(f"{k} must be between {lo:g}s and 30d, not {kv[k]!r}")
            vals[k] = d
    return MountOptions(**{**o.__dict__, **vals})
