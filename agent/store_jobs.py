"""The agent's store jobs, handed out by the control service through host.watch:
snapshots, clones and online resizes (control/snapshots.py, control/resize.py).

Why in the agent, and why a module of their own: only agents reach the store
and the volumes mounted on their host; each job is independent of the
agent's per-volume mount state, runs in a worker thread, and is answered
with `snapshot.done` whatever happens (the error is the answer), so it
lives beside the agent the way removals do (agent/removal_jobs.py).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import trio

from agent.fsd_proc import FsdManager
from control.client import ControlError, Unreachable

log = logging.getLogger("ferry.agent")


class StoreJobs:
    def __init__(self, host: str, store_url: str, control: Any, fsd: FsdManager) -> None:
        self.host = host
        self.store_url = store_url
        self.control = control
        self.fsd = fsd

    async def run(self, job: dict[str, Any]) -> None:
        """Do job `job` from host.watch and answer it with snapshot.done: create or
        remove a snapshot (a volume mounted here is committed first), make a
        clone, or grow a block volume. Never raises: failures are the answer."""
        from fsd.backup import snapshots as fsnap
        volume, snap, op = str(job["volume"]), str(job["snap"]), job.get("op")
        if op == "resize":
            await self._resize_job(job)
            return

        def run() -> list[int] | None:
            store = self.fsd.open_store()
            try:
                if op == "clone":
                    return self._make_clone(store, volume, snap, dict(job.get("options") or {}))
                if op == "create":
                    fsnap.flush_local_mount(self.store_url, volume)
                    return list(fsnap.create(store, volume, snap).position)
                # gone already: what was asked holds
                with contextlib.suppress(fsnap.SnapshotError):
                    fsnap.remove(store, volume, snap)
                return None
            finally:
                store.close()
        error: str | None = None
        position = None
        try:
            position = await trio.to_thread.run_sync(run)
        except Exception as e:  # noqa: BLE001 - the message goes back to the requester
            error = f"{type(e).__name__}: {e}" if not str(e) else str(e)
            log.warning("host=%s volume=%s snapshot %s %s failed: %s", self.host, volume, op, snap, error)
        else:
            log.info("host=%s volume=%s snapshot %s %s done", self.host, volume, snap, op)
        await self._report(volume, snap, job["seq"], error, position, None)

    async def _resize_job(self, job: dict[str, Any]) -> None:
        """Grow a block volume mounted here, online (control/resize.py): the
        image, the loop device, the kernel filesystem. Not mounted here (any
        more): nothing to do now, the recorded size applies at its next mount."""
        from fsd.block import stack as blockstack
        volume = str(job["volume"])
        size = int((job.get("options") or {}).get("size", 0))
        target, fuse_mp = self.fsd.mountpoint(volume), blockstack.fuse_mountpoint(self.fsd.cache_dir(volume))

        def run() -> str:
            if not (blockstack.mounted(target) and blockstack.mounted(fuse_mp)):
                return "not mounted on this host now: it takes the new size at its next mount"
            old, new, now = blockstack.grow(fuse_mp, target, size, volume)
            if not now:
                return (f"the image grew from {old} to {new} bytes; ext4 takes it at the next mount (growing it "
                        "while mounted needs CAP_SYS_RESOURCE, which this agent lacks)")
            return f"grown online from {old} to {new} bytes"
        error = note = None
        try:
            note = await trio.to_thread.run_sync(run)
        except Exception as e:  # noqa: BLE001 - the message goes back to the requester
            error = str(e) or type(e).__name__
            log.warning("host=%s volume=%s resize to %d failed: %s", self.host, volume, size, error)
        else:
            log.info("host=%s volume=%s resize to %d: %s", self.host, volume, size, note)
        await self._report(volume, str(job["snap"]), job["seq"], error, None, note)

    async def _report(self, volume: str, snap: str, seq: int, error: str | None, position: list[int] | None,
                      note: str | None) -> None:
        """Answer the job, trying again for a while if the control service is down
        (the requester waits up to its own deadline; a job never answered is
        dropped by the control service)."""
        delay = 1.0
        for attempt in range(6):
            try:
                await self.control.snapshot_done(volume, snap, self.host, seq, error, position, note)
                return
            except ControlError as e:
                if e.code != "unavailable":
                    log.warning("host=%s volume=%s answer to job %s refused: %s", self.host, volume, seq, e)
                    return
                why = e.message
            except Unreachable as e:
                why = str(e)
            if attempt == 5:
                log.warning("host=%s volume=%s cannot answer job %s: %s", self.host, volume, seq, why)
                return
            await trio.sleep(delay)
            delay *= 2

    def _make_clone(self, store: Any, new: str, source: str, options: dict[str, str]) -> list[int]:
        """Worker thread: the store part of `volume create NEW -o from=SOURCE`.
        A clone made by an earlier attempt whose answer was lost counts."""
        from fsd.backup import clones
        from fsd.backup import snapshots as fsnap
        from fsd.format import control_record
        from fsd.format.superblock import mkfs_options
        from fsd.volume import objects as vol_mod
        src = clones.parse_source(source, 0)
        ref = vol_mod.live_volume(store, new)
        if ref is not None:
            sb = vol_mod.read_superblock(store, ref)
            if sb.origins and sb.origins[0].name == src.volume:
                return list(sb.origins[0].position)
        if src.snap is None:
            fsnap.flush_local_mount(self.store_url, src.volume)   # "as last committed" includes this host's writes
        ref, sb, _src = clones.create(store, new, src, mkfs_options(options))
        store.put(control_record.key(ref.root), control_record.encode(options))     # for ferry control recover
        log.info("host=%s volume=%s created as a clone of %s", self.host, new, src.describe())
        return list(sb.origins[0].position)
