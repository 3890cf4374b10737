"""Where a host's running mounts are listed: `$FERRY_RUN_DIR` (default
/run/ferry), one `mounts/<hash>.json` per mountpoint.

Why a module of its own: the daemon writes its entry (fsd/lifecycle/mount.py), and the
CLI, the agent, `inspect` and snapshots read them to find the daemon serving
a mountpoint; none of those readers should need the mount machinery.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def run_dir() -> Path:
    return Path(os.environ.get("FERRY_RUN_DIR", "/run/ferry"))


def registry_path(mountpoint: Path) -> Path:
    # abspath, not resolve(): resolving stats the mountpoint, which would
    # deadlock when called by the daemon serving it.
    h = hashlib.sha1(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return run_dir() / "mounts" / f"{h}.json"
