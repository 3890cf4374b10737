"""The agent's part of removing a volume: fence it in the store, then delete it.

Why in the agent: the control service does not reach the object store
(control/removals.py explains the two steps and who runs them). A job is
`(name, root)`: root None means the volume is still to be fenced; after
that, the deletion of the objects under `root` runs in the background,
its progress reported in heartbeats, and a job that fails (store or
control unreachable) is handed out again by a `host.watch` after a pause.
Both store steps (fsd/lifecycle/removal.py) are idempotent, so resuming after an
agent crash, or another host taking a job over, is safe.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from control.client import ControlError, Unreachable

log = logging.getLogger("ferry.agent.removal")
RETRY_AFTER = 10.0          # seconds before a failed job may be handed out again

Job = tuple[str, "str | None"]


class RemovalAborted(Exception):
    """The volume turned out to be in use here: it was not removed."""


@dataclass
class _Fencing:
    """A fencing in progress, for a second job of the same volume to wait on."""

    done: trio.Event = field(default_factory=trio.Event)
    root: str | None = None
    error: str | None = None


class RemovalRunner:
    def __init__(self, host: str, store_url: str, control: Any, lock_for: Callable[[str], trio.Lock],
                 in_use: Callable[[str], bool], retry_after: float = RETRY_AFTER,
                 key_dir: Path | None = None) -> None:
        self.host = host
        self.store_url = store_url
        self.key_dir = key_dir          # removing a clone reads its origin's (maybe encrypted) pins
        self.control = control
        self._lock_for = lock_for
        self._in_use = in_use
        self.retry_after = retry_after
        self._running: set[Job] = set()
        self._fencing: dict[str, _Fencing] = {}             # volume -> the fencing under way
        self._cooldown: dict[Job, float] = {}               # failed jobs: not restarted before (trio time)
        self._progress: dict[str, dict[str, int]] = {}     # root -> {deleted, total, bytes}
        self._plock = threading.Lock()                      # progress is written from worker threads

    # ----------------------------------------------------------- reports
    def _busy(self) -> set[Job]:
        now = trio.current_time()
        self._cooldown = {k: t for k, t in self._cooldown.items() if t > now}
        return self._running | set(self._cooldown)

    def running(self) -> list[dict[str, Any]]:
        """Jobs running here, or failed recently and not to be handed out again yet."""
        return [{"name": n, "root": r} for n, r in sorted(self._busy(), key=lambda j: (j[0], j[1] or ""))]

    def progress(self) -> list[dict[str, Any]]:
        with self._plock:
            return [{"root": root, **p} for root, p in sorted(self._progress.items())]

    def is_running(self, name: str, root: str | None) -> bool:
        return (name, root) in self._busy()

    # -------------------------------------------------------------- jobs
    async def job(self, name: str, root: str | None, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run one job. Started once the volume is fenced (value: its root, "" if it
        was not on the store); a fencing failure is raised to the caller of
        `nursery.start`, a deletion failure is logged and the job handed out again."""
        key: Job = (name, root)
        if key in self._running:
            fencing = self._fencing.get(name) if root is None else None
            if fencing is not None:
                # Docker's Remove and the control service's job can race here: the
                # second must not answer before the volume is fenced (the promise of
                # `volume rm`), so it waits for the first's fencing and its outcome.
                await fencing.done.wait()
                if fencing.error is not None:
                    raise RemovalAborted(fencing.error)
                root = fencing.root
            task_status.started(root)
            return
        self._running.add(key)
        keys = [key]
        started = False
        try:
            if root is None:
                fencing = self._fencing[name] = _Fencing()
                try:
                    root = fencing.root = await self._fence(name)
                except BaseException as e:
                    fencing.error = str(e) or type(e).__name__
                    raise
                finally:
                    fencing.done.set()
                    if self._fencing.get(name) is fencing:
                        del self._fencing[name]
                # From here on this job is also the deletion of (name, root), the
                # job the control service hands out once the volume is fenced:
                # a watch must not start that one beside it.
                if (name, root) in self._running:
                    task_status.started(root)
                    return
                keys.append((name, root))
                self._running.add((name, root))
            task_status.started(root)
            started = True
            if root:
                await self._delete(name, root)
        except Exception as e:  # noqa: BLE001 - a background job must never crash the agent
            if not isinstance(e, RemovalAborted):
                for k in keys:
                    self._cooldown[k] = trio.current_time() + self.retry_after
            if not started:
                raise
            log.error("host=%s volume=%s deleting %s failed: %s; retrying in %gs or more", self.host, name,
                      root, e, self.retry_after)
        finally:
            self._running.difference_update(keys)

    async def _fence(self, name: str) -> str:
        """Mark the volume removed in the store and tell the control service."""
        async with self._lock_for(name):
            if self._in_use(name):
                reason = f"volume {name!r} is in use on host {self.host}"
                try:
                    await self.control.removal_aborted(name, self.host, reason)
                except (ControlError, Unreachable) as e:
                    log.warning("host=%s volume=%s cannot report the aborted removal: %s", self.host, name, e)
                raise RemovalAborted(reason + "; nothing was removed")
            root = await trio.to_thread.run_sync(self._begin_removal, name)
            try:
                await self.control.removal_marked(name, self.host, root)
            except ControlError as e:
                if e.code not in ("not_found", "conflict"):
                    raise
                log.info("host=%s volume=%s already marked removed by another host (%s)", self.host, name,
                         e.message)
        log.info("host=%s volume=%s fenced and marked removed in the store (root %s)", self.host, name,
                 root or "none: it was never formatted")
        return root

    def _begin_removal(self, name: str) -> str:
        """Worker thread. Force is right here: the control service granted the
        removal because no live host holds the lease, so an unsealed newest epoch
        belongs to a dead or fenced owner, which the removal seals like a takeover."""
        from fsd.lifecycle import removal
        from fsd.volume import objects as vol_mod
        store = self._open_store()
        try:
            if vol_mod.find_volume(store, name) is None:
                return ""
            return removal.begin_removal(store, name, force=True).root
        finally:
            store.close()

    async def _delete(self, name: str, root: str) -> None:
        log.info("host=%s volume=%s deleting the objects under %s", self.host, name, root)
        res = await trio.to_thread.run_sync(self._delete_sync, name, root)
        try:
            await self.control.removal_done(root, self.host)
        finally:
            with self._plock:
                self._progress.pop(root, None)
        if res is not None:
            log.info("host=%s volume=%s deleted: %d objects, %d bytes freed%s", self.host, name, res.deleted,
                     res.bytes, f"; kept {res.kept_objects} objects that its clone(s) {', '.join(res.held_by)} "
                                "share, until the last of them is removed" if res.held_by else "")

    def _open_store(self) -> Any:
        from fsd.store import KeyRing, open_store
        return open_store(self.store_url, ring=KeyRing(key_dir=self.key_dir) if self.key_dir else None)

    def _delete_sync(self, name: str, root: str) -> Any:
        """Worker thread: delete what is left under `root` (None if nothing was)."""
        from fsd.lifecycle import removal

        def report(done: int, total: int, nbytes: int) -> None:
            with self._plock:
                self._progress[root] = {"deleted": done, "total": total, "bytes": nbytes}

        store = self._open_store()
        try:
            refs = [r for r in removal.pending_removals(store, name) if r.root == root]
            if not refs:
                return None
            return removal.delete_volume(store, refs[0], progress=report)
        finally:
            store.close()
