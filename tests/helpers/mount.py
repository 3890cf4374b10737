"""Drive `ferry fs ...` as a user would, as subprocesses, and always clean up:
no mount and no daemon survives a test, even a failing one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def ferry_cmd() -> list[str]:
    script = Path(sys.executable).parent / "ferry"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fsd.cli"]


def run_ferry(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(ferry_cmd() + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def is_mounted(mp: Path) -> bool:
    target = os.path.abspath(mp)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


class MountError(Exception):
    pass


class FerryMount:
    """One mountpoint + cache dir; mount/umount/kill9 it any number of times."""

    def __init__(self, workdir: Path, mountpoint: Path, cache_dir: Path) -> None:
        self.workdir = workdir
        self.mountpoint = mountpoint
        self.cache_dir = cache_dir
        self.run_dir = workdir / "run"
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._n = 0
        mountpoint.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict:
        return {**os.environ, "FERRY_RUN_DIR": str(self.run_dir)}

    def mkfs(self, store_url: str, volume: str, options: list[str] = ()) -> None:
        args = ["fs", "mkfs", "--store", store_url, volume]
        for o in options:
            args += ["-o", o]
        r = run_ferry(*args)
        if r.returncode != 0:
            raise MountError(f"mkfs failed: {r.stderr}")

    def mount(self, store_url: str, volume: str, *, takeover: bool = False, options: list[str] = (),
              extra_env: dict | None = None, timeout: float = 60) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already mounted"
        self._n += 1
        self.log_path = self.workdir / f"fsd-{self.mountpoint.name}-{self._n}.log"
        args = ferry_cmd() + ["fs", "mount", "--store", store_url, "--cache-dir", str(self.cache_dir),
                              volume, str(self.mountpoint), "--foreground"]
        if takeover:
            args.append("--takeover")
        for o in options:
            args += ["-o", o]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True,
                                         env={**self.env, **(extra_env or {})})
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise MountError(f"mount exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.kill9()
                raise MountError(f"mount did not appear within {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def umount(self, *, expect_failure: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run(ferry_cmd() + ["fs", "umount", str(self.mountpoint)], capture_output=True,
                           text=True, timeout=timeout, env=self.env)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        if not expect_failure and r.returncode != 0:
            raise MountError(f"umount failed ({r.returncode}): {r.stdout}{r.stderr}\n{self.log()}")
        return r

    def kill9(self) -> None:
        """Simulate the loss of the daemon (or the host): SIGKILL, then have the
        kernel drop the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.cleanup_dead_mount()

    def wait_dead(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def cleanup_dead_mount(self) -> None:
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.umount(expect_failure=True, timeout=30)
            except Exception:
                pass
        self.kill9()


def fsck_clean(store_url: str, volume: str) -> str:
    r = run_ferry("fs", "fsck", "--store", store_url, volume)
    assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr
    return r.stdout
