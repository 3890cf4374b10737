"""Drive `ferry fs ...` as a user would, as subprocesses, and always clean up:
no mount and no daemon survives a test, even a failing one.

    with FerryMount(tmp_path, tmp_path / "mnt", tmp_path / "cache") as m:
        m.mkfs(url, "vol")
        m.mount(url, "vol")
        ...
        m.umount()          # or m.kill9() to simulate losing the host
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

FSTYPE = "fuse.ferry"


def ferry_cmd() -> list[str]:
    """The installed `ferry` script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "ferry"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


def run_ferry(*args: str, env: dict | None = None, timeout: float = 120,
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(ferry_cmd() + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_fstypes(mp: str | os.PathLike) -> list[str]:
    """fstypes of everything mounted on mp (stacked mounts: last is on top)."""
    target = str(mp)
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and _unescape(fields[1]) == target:
                out.append(fields[2])
    return out


def is_mounted(mp: str | os.PathLike, fstype: str | None = None) -> bool:
    types = mount_fstypes(mp)
    return bool(types) if fstype is None else fstype in types


def _abs(p: str | os.PathLike) -> Path:
    # realpath of the parent only: the mountpoint itself may be a dead FUSE
    # mount (ENOTCONN) when this is called.
    p = Path(os.path.abspath(p))
    return Path(os.path.realpath(p.parent)) / p.name


class MountError(Exception):
    pass


class FerryMount:
    """One mountpoint + cache dir; mount/umount/kill9 it any number of times.

    workdir holds the daemon logs and the mount registry (FERRY_RUN_DIR)."""

    def __init__(self, workdir: Path, mountpoint: Path | None = None, cache_dir: Path | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.mountpoint = _abs(mountpoint if mountpoint is not None else self.workdir / "mnt")
        self.cache_dir = Path(cache_dir if cache_dir is not None else self.workdir / "cache")
        self.run_dir = self.workdir / "run"
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self.store_url: str | None = None
        self.volume: str | None = None
        self._n = 0
        self.mountpoint.mkdir(parents=True, exist_ok=True)

    # -- context manager: always leaves nothing behind
    def __enter__(self) -> FerryMount:
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    @property
    def env(self) -> dict:
        return {**os.environ, "FERRY_RUN_DIR": str(self.run_dir)}

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mkfs(self, store_url: str, volume: str, options: list[str] | tuple = ()) -> None:
        args = ["fs", "mkfs", "--store", store_url, volume]
        for o in options:
            args += ["-o", o]
        r = run_ferry(*args, env={"FERRY_RUN_DIR": str(self.run_dir)})
        if r.returncode != 0:
            raise MountError(f"mkfs failed ({r.returncode}): {r.stdout}{r.stderr}")

    def mount(self, store_url: str, volume: str, mountpoint: Path | None = None, cache_dir: Path | None = None,
              takeover: bool = False, options: list[str] | tuple = (), extra_env: dict | None = None,
              timeout: float = 60, fstype: str = FSTYPE) -> Path:
        """Start `ferry fs mount --foreground` and return once the kernel shows
        the mount (`fstype`: fuse.ferry, or ext4/xfs for a layout=block
        volume); raise MountError (with the daemon log) if the daemon exits
        first."""
        if self.running:
            raise MountError(f"{self.mountpoint}: already mounted by pid {self.proc.pid}")
        if mountpoint is not None:
            self.mountpoint = _abs(mountpoint)
            self.mountpoint.mkdir(parents=True, exist_ok=True)
        if cache_dir is not None:
            self.cache_dir = Path(cache_dir)
        self.store_url, self.volume = store_url, volume
        self._n += 1
        self.log_path = self.workdir / f"fsd-{self.mountpoint.name}-{self._n}.log"
        args = ferry_cmd() + ["fs", "mount", "--store", store_url, "--cache-dir", str(self.cache_dir),
                              volume, str(self.mountpoint), "--foreground"]
        if takeover:
            args.append("--takeover")
        for o in options:
            args += ["-o", o]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True, env={**self.env, **(extra_env or {})})
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint, fstype):
            if self.proc.poll() is not None:
                raise MountError(f"mount exited with {self.proc.returncode} before the mount appeared:\n"
                                 f"{self.log()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise MountError(f"mount did not appear within {timeout} s:\n{self.log()}")
            time.sleep(0.02)
        return self.mountpoint

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def umount(self, *, expect_failure: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        """`ferry fs umount`, then wait for the daemon to exit."""
        r = subprocess.run(ferry_cmd() + ["fs", "umount", str(self.mountpoint)], capture_output=True,
                           text=True, timeout=timeout, env=self.env)
        if r.returncode != 0 and not expect_failure:
            raise MountError(f"umount failed ({r.returncode}): {r.stdout}{r.stderr}\n{self.log()}")
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
                if expect_failure:
                    return r
                raise MountError(f"daemon still running {timeout} s after `ferry fs umount` "
                                 f"(killed):\n{self.log()}") from None
        if r.returncode == 0 and (is_mounted(self.mountpoint) or is_mounted(self.fuse_mountpoint)):
            raise MountError(f"`ferry fs umount` exited 0 but {self.mountpoint} is still mounted")
        return r

    @property
    def fuse_mountpoint(self) -> Path:
        """Where a layout=block volume's ferry filesystem (holding `image`) is mounted."""
        from fsd.block.stack import fuse_mountpoint
        return fuse_mountpoint(self.cache_dir)

    def kill9(self) -> None:
        """Simulate the loss of the daemon (or the host): SIGKILL its process
        group, then have the kernel drop the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.cleanup_dead_mount()

    def wait_dead(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def cleanup_dead_mount(self) -> None:
        if is_mounted(self.fuse_mountpoint) or any(t in ("ext4", "xfs") for t in mount_fstypes(self.mountpoint)):
            from fsd.block.stack import cleanup_dead  # a block volume's kernel fs, loop device, ferry
            cleanup_dead(self.mountpoint, self.fuse_mountpoint)
        for _ in range(8):                       # stacked mounts: one layer per call
            if not any(t.startswith("fuse") for t in mount_fstypes(self.mountpoint)):
                return
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)

    def cleanup(self, timeout: float = 30) -> None:
        """Leave no daemon and no mount behind: a clean umount if possible,
        else kill -9 and a lazy unmount. Never raises."""
        try:
            if self.running:
                self.umount(expect_failure=True, timeout=timeout)
        except Exception:
            pass
        with contextlib.suppress(Exception):
            self.kill9()


def fsck(store_url: str, volume: str) -> str:
    """`ferry fs fsck`; asserts it reports the volume clean."""
    r = run_ferry("fs", "fsck", "--store", store_url, volume)
    assert r.returncode == 0 and "clean" in r.stdout, f"fsck exit {r.returncode}:\n{r.stdout}{r.stderr}"
    return r.stdout


fsck_clean = fsck


def tree_snapshot(root: Path, *, times: bool = False) -> dict:
    """Everything POSIX-visible about the tree under root (not root itself):
    type+mode, size, nlink, contents, symlink targets, user.* xattrs, and
    with times=True owner and nanosecond mtimes/ctimes as well."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            s = os.lstat(p)
            ent: dict = {"mode": oct(s.st_mode), "nlink": s.st_nlink}
            if stat.S_ISREG(s.st_mode):
                ent["size"] = s.st_size
                data = p.read_bytes()
                ent["data"] = data if len(data) <= 256 else (len(data), hashlib.sha256(data).hexdigest()[:16])
            elif stat.S_ISLNK(s.st_mode):
                ent["size"] = s.st_size
                ent["target"] = os.readlink(p)
            if not stat.S_ISLNK(s.st_mode):
                ent["xattrs"] = {k: os.getxattr(p, k) for k in sorted(os.listxattr(p)) if k.startswith("user.")}
            if times:
                ent.update(uid=s.st_uid, gid=s.st_gid, mtime_ns=s.st_mtime_ns, ctime_ns=s.st_ctime_ns)
            out[str(p.relative_to(root))] = ent
    return out


def snapshot_diff(expected: dict, got: dict) -> list[str]:
    """Readable differences between two tree_snapshot()s (empty when equal)."""
    out = []
    for path in sorted(set(expected) | set(got)):
        if path not in got:
            out.append(f"{path}: missing")
        elif path not in expected:
            out.append(f"{path}: unexpected {got[path]}")
        else:
            for k in sorted(set(expected[path]) | set(got[path])):
                a, b = expected[path].get(k), got[path].get(k)
                if a != b:
                    out.append(f"{path}: {k} expected {a!r}, got {b!r}")
    return out


def fsync_dir(path: Path) -> None:
    """fsync a directory: ferry commits the whole volume (an unlink or rename
    in it is durable once this returns)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_fsync(path: Path, data: bytes) -> None:
    """Write a whole file and fsync it: after this returns, ferry has
    acknowledged the bytes as durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
