"""Starting, stopping, adopting and checking filesystem daemons (one per mounted volume).

Why through the `ferry fs` command line: the agent runs exactly the daemon a
standalone user would (docs/cluster.md), in background mode, so the daemon
lives in its own session and outlives the agent (an agent restart must not
break running mounts). `ferry fs umount` is the one clean stop: it commits
everything, seals the epoch with reason `release` and waits for the daemon.

What a daemon is doing is read from the files it keeps: fsd's mount
registry (`$FERRY_RUN_DIR/mounts/<hash>.json`: pid, volume, cache dir) and
`status.json` in its cache directory (phase, epoch, upload lag). Every
blocking call (file reads, stat of a FUSE mountpoint, store calls for mkfs)
runs in a worker thread: a stat of a hung FUSE mount must not freeze the loop.
"""
from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from agent.volumes import Health
from fsd.block.stack import cleanup_dead, fuse_mountpoint, image_path, loops_backed_by
from fsd.lifecycle.daemon import spawn_mount, unmount_and_wait
from fsd.options import KNOWN as MOUNT_OPTIONS
from fsd.rundir import registry_path

T = TypeVar("T")
log = logging.getLogger("ferry.agent.fsd")


class FsdError(Exception):
    """A daemon could not be started or stopped; the message says why and where the log is."""


@dataclass(frozen=True)
class FsdInfo:
    volume: str
    mountpoint: Path
    pid: int
    cache_dir: Path


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def in_proc_mounts(mp: Path) -> bool:
    target = os.path.abspath(mp)
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == target:
                return True
    return False


def _stat_ok(mp: Path) -> bool:
    try:
        os.stat(mp)
        return True
    except OSError as e:
        if e.errno in (errno.ENOTCONN, errno.ECONNABORTED, errno.EIO):
            return False
        raise


class FsdManager:
    """Daemons of one agent: `<mount-root>/<vol>` with cache `<cache-root>/<vol>`."""

    def __init__(self, store_url: str, cache_root: Path, mount_root: Path, *,
                 mount_timeout: float = 60.0,
                 umount_timeout: float = 300.0, stat_timeout: float = 5.0, key_dir: Path | None = None) -> None:
        self.store_url = store_url
        self.key_dir = key_dir          # keys of encrypted volumes, <name>.key (the daemons get it too)
        self.cache_root = Path(cache_root)
        self.mount_root = Path(mount_root)
        self.mount_timeout = mount_timeout
        self.umount_timeout = umount_timeout
        self.stat_timeout = stat_timeout
        self._limiter = trio.CapacityLimiter(8)

    # ------------------------------------------------------------ paths
    def mountpoint(self, volume: str) -> Path:
        return Path(os.path.abspath(self.mount_root / volume))

    def cache_dir(self, volume: str) -> Path:
        return Path(os.path.abspath(self.cache_root / volume))

    async def _thread(self, fn, *args, abandon: bool = False):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=abandon)

    # ------------------------------------------------------------ registry / status
    def _registry(self, volume: str) -> dict[str, Any] | None:
        try:
            d = json.loads(registry_path(self.mountpoint(volume)).read_text())
        except (OSError, ValueError):
            return None
        return d if isinstance(d, dict) and d.get("volume") == volume else None

    async def info(self, volume: str) -> FsdInfo | None:
        d = await self._thread(self._registry, volume)
        if d is None or not isinstance(d.get("pid"), int):
            return None
        return FsdInfo(volume=volume, mountpoint=self.mountpoint(volume), pid=d["pid"],
                       cache_dir=Path(d.get("cache_dir") or self.cache_dir(volume)))

    def _status(self, volume: str, pid: int | None) -> dict[str, Any] | None:
        try:
            st = json.loads((self.cache_dir(volume) / "status.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(st, dict) or (pid is not None and st.get("pid") != pid):
            return None
        return st

    async def status(self, volume: str) -> dict[str, Any] | None:
        """The running daemon's status.json (epoch, upload_lag_s, phase...), or None."""
        info = await self.info(volume)
        if info is None:
            return None
        return await self._thread(self._status, volume, info.pid)

    def registered_volumes(self) -> list[str]:
        """Volumes with a daemon registered under our mount root (blocking)."""
        reg_dir = registry_path(self.mountpoint("x")).parent
        out = []
        try:
            entries = list(reg_dir.glob("*.json"))
        except OSError:
            return []
        for p in entries:
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            vol, mp = d.get("volume"), d.get("mountpoint")
            if isinstance(vol, str) and isinstance(mp, str) and mp == str(self.mountpoint(vol)):
                out.append(vol)
        return sorted(out)

    async def health(self, volume: str, *, host_link: bool = True) -> Health:
        """What the volume's daemon looks like from here. `host_link` False: the host
        tore down the mounts under the mount root (agent/hostlink.py), so a live
        daemon whose mount is gone from this namespace is DETACHED, not dead."""
        info = await self.info(volume)
        mp = self.mountpoint(volume)
        mounted = await self._thread(in_proc_mounts, mp)
        if info is None:
            return Health.DEAD if mounted else Health.ABSENT
        if not await self._thread(pid_alive, info.pid):
            return Health.DEAD
        if not mounted:                 # daemon alive but not mounted: stopping or broken,
            return Health.DEAD if host_link else Health.DETACHED    # or unmounted by the host
        with trio.move_on_after(self.stat_timeout):
            try:
                ok = await self._thread(_stat_ok, mp, abandon=True)
            except OSError:
                ok = False
            return Health.RUNNING if ok else Health.DEAD
        return Health.HUNG

    # ------------------------------------------------------------ actions
    def open_store(self) -> Any:
        """The agent's store (blocking), able to open encrypted volumes with the key directory's keys."""
        from fsd.store import KeyRing, open_store
        return open_store(self.store_url, ring=KeyRing(key_dir=self.key_dir) if self.key_dir else None)

    async def _with_store(self, what: str, fn: Callable[[Any], T]) -> T:
        """`fn(store)` in a worker thread on a store opened for it; any failure
        becomes FsdError("cannot WHAT on URL: why")."""

        def run() -> T:
            store = self.open_store()
            try:
                return fn(store)
            finally:
                store.close()
        try:
            return await self._thread(run)
        except Exception as e:  # noqa: BLE001 - StoreError, VolumeError, ...: the message matters
            raise FsdError(f"cannot {what} on {self.store_url}: {e}") from None

    async def exists_in_store(self, volume: str) -> bool:
        """Whether the store holds a live (not removed) volume of that name."""
        from fsd.volume import objects as vol_mod
        return await self._with_store(f"read volume {volume!r}",
                                      lambda store: vol_mod.live_volume(store, volume) is not None)

    async def mkfs_if_missing(self, volume: str, options: dict[str, str]) -> bool:
        """Create the volume on the store unless it is there already. True if created."""
        from fsd.format import control_record
        from fsd.format.superblock import mkfs_options
        from fsd.volume import objects as vol_mod

        mkfs_opts = mkfs_options(options)

        def run(store: Any) -> bool:
            if vol_mod.live_volume(store, volume) is not None:
                return False
            if "from" in options:
                raise vol_mod.VolumeError(f"it is a clone of {options['from']} that is missing from the "
                                          "store (removed outside ferry?); remove it (docker volume rm) "
                                          "and create it again")
            try:
                ref, _sb = vol_mod.mkfs(store, volume, mkfs_opts)
            except vol_mod.VolumeError:
                if vol_mod.live_volume(store, volume) is None:     # not created concurrently
                    raise
                return False
            # Every option as the control service has it, for `ferry control recover`.
            store.put(control_record.key(ref.root), control_record.encode(options))
            return True
        return await self._with_store(f"create volume {volume!r}", run)

    async def start(self, volume: str, *, takeover: bool, options: dict[str, str]) -> FsdInfo:
        mp, cache = self.mountpoint(volume), self.cache_dir(volume)
        def make_dirs() -> None:
            mp.mkdir(parents=True, exist_ok=True)
            cache.mkdir(parents=True, exist_ok=True)
        await self._thread(make_dirs)
        if await self._thread(lambda: in_proc_mounts(mp) or in_proc_mounts(fuse_mountpoint(cache))):
            await self.lazy_unmount(volume)
        args = ["fs", "mount", "--store", self.store_url, "--cache-dir", str(cache), volume, str(mp)]
        if self.key_dir is not None:
            args += ["--key-dir", str(self.key_dir)]
        if takeover:
            args.append("--takeover")
        for k, v in sorted(options.items()):
            if k in MOUNT_OPTIONS:
                args += ["-o", f"{k}={v}"]
        log.info("volume=%s starting fsd: ferry %s", volume, " ".join(args))
        # In a worker thread, not a `ferry fs mount` child: that would cost a
        # second Python start-up on every Mount (planned moves are timed).
        started = await self._thread(lambda: spawn_mount(args, cache, mp, timeout=self.mount_timeout),
                                     abandon=True)
        if not started.ok:
            tail = [ln for ln in started.message.strip().splitlines() if ln.strip()][-3:]
            raise FsdError(f"volume {volume!r}: mounting failed: {' | '.join(tail)} (log: {cache / 'fsd.log'})")
        # The kernel shows the mount a moment before the daemon writes its
        # registry entry (right after pyfuse3.init): give it that moment.
        with trio.move_on_after(5.0):
            while (info := await self.info(volume)) is None:
                await trio.sleep(0.02)
        if info is None:
            raise FsdError(f"volume {volume!r}: fsd mounted {mp} but did not register itself")
        return info

    async def wait_epoch(self, volume: str, timeout: float = 5.0) -> int | None:
        """The epoch the running daemon claimed (from its status file)."""
        with trio.move_on_after(timeout):
            while True:
                st = await self.status(volume)
                if st is not None and isinstance(st.get("epoch"), int):
                    return st["epoch"]
                await trio.sleep(0.1)
        return None

    async def stop(self, volume: str) -> None:
        """Clean stop: unmount, the daemon commits everything and releases its epoch."""
        mp = self.mountpoint(volume)
        log.info("volume=%s stopping fsd (unmount %s, commit, release)", volume, mp)
        registry = await self._thread(lambda: self._registry(volume))
        result = await self._thread(lambda: unmount_and_wait(mp, registry, timeout=self.umount_timeout),
                                    abandon=True)
        if not result.ok:
            raise FsdError(f"volume {volume!r}: unmount failed: {result.message}")

    async def lazy_unmount(self, volume: str) -> None:
        """Detach a dead mount (ENOTCONN) so the mountpoint can be used again."""
        mp = self.mountpoint(volume)
        fuse_mp = fuse_mountpoint(self.cache_dir(volume))
        if await self._thread(lambda: in_proc_mounts(fuse_mp) or bool(loops_backed_by(image_path(fuse_mp)))):
            # a block volume: its kernel filesystem, loop device and ferry mount
            await self._thread(cleanup_dead, mp, fuse_mp)
            log.warning("volume=%s detached dead block volume stack %s", volume, mp)
            return
        r = await trio.run_process(["fusermount3", "-u", "-z", str(mp)], capture_stdout=True,
                                   capture_stderr=True, check=False)
        if r.returncode != 0 and await self._thread(in_proc_mounts, mp):
            r2 = await trio.run_process(["umount", "-l", str(mp)], capture_stdout=True,
                                        capture_stderr=True, check=False)
            if r2.returncode != 0:
                raise FsdError(f"volume {volume!r}: cannot detach dead mount {mp}: "
                               f"{r.stderr.decode(errors='replace').strip()}")
        log.warning("volume=%s detached dead mount %s", volume, mp)

    async def kill(self, volume: str) -> None:
        """Forget a daemon that is dead or must go: detach its mount, drop its registry entry."""
        info = await self.info(volume)
        if await self._thread(in_proc_mounts, self.mountpoint(volume)):
            await self.lazy_unmount(volume)
        if info is not None and not await self._thread(pid_alive, info.pid):
            await self._thread(lambda: registry_path(self.mountpoint(volume)).unlink(missing_ok=True))
