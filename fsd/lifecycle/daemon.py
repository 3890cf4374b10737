"""Starting a filesystem daemon in the background and stopping it cleanly.

Shared by `ferry fs mount|umount` and the agent, so that both behave the same
and the agent does not pay a Python start-up (~0.4 s) for a CLI process on
every Mount and Unmount of a planned move. Blocking: callers on a trio loop
run these in a worker thread.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def is_mounted(mp: Path | str) -> bool:
    """Whether anything is mounted on `mp`, from /proc/mounts (never a stat of a possibly hung mount)."""
    from fsd.block.stack import mounted
    return mounted(Path(mp))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Started:
    ok: bool
    pid: int
    message: str      # on failure: the tail of the daemon's log


def spawn_mount(cli_args: list[str], cache_dir: Path, mountpoint: Path, *,
                timeout: float | None = None, env: dict | None = None) -> Started:
    """Run `ferry <cli_args> --foreground` (cli_args: `fs mount ...`, maybe
    after global flags such as -v) as a daemon in its own
    session (it outlives the caller), logging to `cache_dir`/fsd.log; return
    once `mountpoint` is mounted, or the daemon exited (or `timeout`)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    logpath = cache_dir / "fsd.log"
    # The daemon runs the very code this process runs, whatever the current
    # directory holds: -P keeps a `cli` there (or a cli.py) from shadowing
    # ferry's, and the tree that holds this fsd comes first on the path.
    env = dict(os.environ if env is None else env)
    tree = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = tree + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-P", "-m", "cli", *cli_args, "--foreground"]
    with open(logpath, "ab") as logf:
        ours = logf.tell()          # the log is kept across mounts: show only what this daemon writes
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, env=env)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if is_mounted(mountpoint):
            return Started(True, proc.pid, "")
        rc = proc.poll()
        if rc is not None:
            with open(logpath, "rb") as f:
                f.seek(ours)
                tail = f.read().decode(errors="replace").splitlines()[-15:]
            return Started(False, proc.pid, "\n".join(tail) + f"\ndaemon exited with {rc}; see {logpath}")
        if deadline is not None and time.monotonic() > deadline:
            return Started(False, proc.pid, f"not mounted after {timeout:g}s; see {logpath}")
        time.sleep(0.02)


@dataclass
class Stopped:
    ok: bool
    message: str


def unmount_and_wait(mountpoint: Path, registry: dict | None, *,
                     progress: Callable[[dict | None], None] | None = None,
                     timeout: float | None = None) -> Stopped:
    """Unmount `mountpoint` and wait until its daemon (from its mount registry
    entry) has committed everything and released its epoch. `progress` gets
    the daemon's status (or None) about every 50 ms while it works."""
    mp = Path(os.path.abspath(mountpoint))
    if registry is not None and registry.get("layout") == "block":
        from fsd.block import stack as blockstack
        try:   # kernel filesystem, loop device, then ferry: the daemon then commits and releases
            blockstack.detach(mp, Path(registry["fuse_mountpoint"]))
        except blockstack.BlockStackError as e:
            return Stopped(False, str(e))
    elif is_mounted(mp):
        r = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True, text=True)
        if r.returncode != 0:
            return Stopped(False, f"cannot unmount {mp}: {r.stderr.strip()}\n"
                                  f"  A process still uses it; find it with: fuser -vm {mp}")
    elif registry is None:
        return Stopped(False, f"{mp} is not mounted")
    if registry is None:
        return Stopped(True, f"unmounted {mp} (no daemon registered here; nothing to wait for)")
    status_path = Path(registry["cache_dir"]) / "status.json"
    deadline = None if timeout is None else time.monotonic() + timeout
    while pid_alive(registry["pid"]):
        if deadline is not None and time.monotonic() > deadline:
            return Stopped(False, f"the daemon for {registry['volume']} did not finish within {timeout:g}s; "
                                  f"see {Path(registry['cache_dir']) / 'fsd.log'}")
        if progress is not None:
            progress(read_status(status_path))
        time.sleep(0.02)
    st = read_status(status_path) or {}
    if st.get("phase") == "released":
        return Stopped(True, f"unmounted {mp}: volume {registry['volume']} committed and released")
    return Stopped(False, f"daemon for {registry['volume']} ended in phase {st.get('phase', 'unknown')}; "
                          f"see {Path(registry['cache_dir']) / 'fsd.log'}")


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
