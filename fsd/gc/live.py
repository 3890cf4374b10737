"""The owning daemon's background maintenance: metadata snapshots and GC.

Why in the owner: it is the only process that knows which of its own
epoch's objects are about to be referenced, so it is the only one that can
collect its own epoch's garbage while the volume is in use (a standalone
`ferry fs gc` never touches an unsealed epoch). And a volume that is never
unmounted still needs its journal folded and its overwritten blocks freed.

Never in the fsync path: everything here runs in its own task (started
through `guarded`), store calls and SQLite reads in worker threads. The
committer is only paused for set operations, under its `commit_lock`.

A pass, in order (docs/format.md, "Garbage collection"):

1. Under the commit lock: start recording the data objects every later
   commit references, and note the last committed position C.
2. Read the local working copy in one read transaction (it is always equal
   to the journal up to its position P >= C; a copy that lags behind C is
   unusable and the pass stops). Without a working copy, the live state is
   used, only when the committer is quiet (then it equals the journal).
3. Write a snapshot at P unless one is there: mounts replay only what
   follows it, however busy the writer stays.
4. GC (every `gc_interval`): observe the sealed epochs, list the objects,
   and plan with roots = the snapshot's references plus everything
   recorded since step 1, base = P. Segments and snapshots below P, data
   of sealed epochs, go first. Candidates of our own epoch are re-checked
   under the commit lock (recorded since? being uploaded?) and handed to
   `BlockIO.begin_deleting`, which makes a later upload of the same bytes
   PUT them again; then deleted.

Deletions are paced (`delete_rate` objects per second) so a large backlog
does not compete with the writer for the store.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from fsd import failpoints
from fsd.backup import history, snapshots
from fsd.datapath.blockio import BlockIO
from fsd.datapath.committer import Committer
from fsd.datapath.localdb import read_committed
from fsd.format import keys
from fsd.gc.run import GcReport, observe_writers
from fsd.meta.state import MetaState, own_refs
from fsd.store.base import ObjectInfo, ObjectStore
from fsd.volume import creating
from fsd.volume import objects as vol_mod
from fsd.volume.retention import DATA, Deletion, GcPlan, PinRoots, Roots, Writers, plan

log = logging.getLogger("ferry.gc")

CHUNK = 100


@dataclass(frozen=True)
class MaintenanceConfig:
    gc: bool = True
    gc_interval: float = 600.0       # seconds between GC passes
    gc_grace: float = 300.0          # unreferenced objects younger than this are kept
    delete_rate: float = 1000.0      # objects deleted per second, at most
    history: float = 0.0             # the volume's history window, seconds (superblock option)


@dataclass
class PassResult:
    snapshot: tuple[int, int] | None = None      # written this pass
    report: GcReport | None = None


def references(state: MetaState) -> set[tuple[bytes, int]]:
    return own_refs(state)


def split_own(p: GcPlan, root: str, epoch: int) -> tuple[list[Deletion], list[Deletion]]:
    """(deletions of other epochs and of segments/snapshots, data of `epoch`)."""
    own: list[Deletion] = []
    rest: list[Deletion] = []
    for d in p.delete:
        dk = keys.parse_data_key(root, d.key) if d.kind == DATA else None
        (own if dk is not None and dk[1] == epoch else rest).append(d)
    return rest, own


@dataclass(frozen=True)
class MountSnapshot:
    """A snapshot due when the mount loaded the volume (`since` segments
    after the newest one: mounts too short to take one, such as a run of
    crashes), taken from the loaded state, which is exact at `position`
    (the mount's begin segment carries no records). Written first by
    `Maintainer.run`, off the mount's path."""
    position: tuple[int, int]
    records: list
    next_ino: int
    since: int


class Maintainer:
    def __init__(self, *, volume: str, root: str, uuid: str, store: ObjectStore, committer: Committer,
                 bio: BlockIO, state: MetaState, wc_path: Path, block_size: int, cfg: MaintenanceConfig,
                 base: tuple[int, int], wall_ns: Callable[[], int] = time.time_ns,
                 due_at_mount: MountSnapshot | None = None) -> None:
        self.volume = volume
        self.root = root
        self.uuid = uuid
        self.store = store
        self.committer = committer
        self.bio = bio
        self.state = state
        self.wc_path = wc_path
        self.block_size = block_size
        self.cfg = cfg
        self.last_snapshot = base        # newest snapshot (or starting point) we know of
        self.due_at_mount = due_at_mount
        self.wall_ns = wall_ns
        self.passes = 0
        self.last_report: GcReport | None = None
        self.freed_bytes = 0                 # by every pass since the mount (metrics)
        # History window: refs of each segment read so far (segments never
        # change), and the last pass's (history base, refs to keep).
        self._history_refs: dict[tuple[int, int], frozenset] = {}
        self._history: tuple[tuple[int, int] | None, set[tuple[bytes, int]]] = (None, set())

    def summary(self) -> dict | None:
        """The last pass's outcome, as the status file and the agent show it."""
        r = self.last_report
        if r is None:
            return None
        return {"at": r.finished_ns / 1e9, "freed_bytes": r.freed_bytes,
                "objects": sum(t["objects"] for t in r.deleted.values()), "live_bytes": r.live_bytes,
                "error": r.error}

    async def run(self) -> None:
        """Forever: a snapshot when `snapshot_every` segments were committed,
        a GC pass every `gc_interval`."""
        next_gc = trio.current_time() + self.cfg.gc_interval
        if self.due_at_mount is not None:
            await self._write_mount_snapshot(self.due_at_mount)
            self.due_at_mount = None
        while True:
            timeout = max(0.0, next_gc - trio.current_time()) if self.cfg.gc else float("inf")
            with trio.move_on_after(timeout):
                await self.committer.snapshot_due.wait()
            if self.committer.fenced:
                return
            collect = self.cfg.gc and trio.current_time() >= next_gc
            await self.pass_once(collect=collect)
            if collect:
                next_gc = trio.current_time() + self.cfg.gc_interval

    async def _write_mount_snapshot(self, snap: MountSnapshot) -> None:
        """Upload the snapshot the mount took of the state it loaded. A
        failure is logged and leaves the usual cadence to take one."""
        t0 = trio.current_time()
        try:
            await trio.to_thread.run_sync(partial(vol_mod.write_snapshot, self.store, self.root, snap.position[0],
                                                  snap.position[1], self.state, snap.records, snap.next_ino))
        except Exception as e:  # noqa: BLE001 - the next due snapshot retries
            log.warning("volume %s: snapshot at mount failed (%r); the next one is taken after %d segments",
                        self.volume, e, self.committer.snapshot_every)
            self.committer.stats.segments_since_snapshot = snap.since + self.committer.stats.segments_since_snapshot
            return
        self.last_snapshot = max(self.last_snapshot, snap.position)
        log.info("volume %s: snapshot written at segment %s, taken at mount (%d records; %.2fs)", self.volume,
                 snap.position, len(snap.records), trio.current_time() - t0)

    async def pass_once(self, *, collect: bool) -> PassResult:
        out = PassResult()
        c = self.committer
        async with c.commit_lock:
            if c.fenced:
                return out
            recorded = c.record_refs()
            committed = (c.pos.epoch, c.pos.next_seq - 1)
            live: tuple[tuple[int, int], MetaState, list] | None = None
            marked: set[tuple[bytes, int]] = set()
            if c.working_copy is None:
                if not c.is_quiet():
                    c.stop_recording(recorded)
                    return out      # no exact view right now: next time
                # Quiet: the live state equals the journal up to `committed`;
                # copy what is needed before the loop changes it again.
                live = (committed, self.state, list(self.state.snapshot_records()))
                marked = references(self.state)
        try:
            t0 = trio.current_time()
            view = live or await trio.to_thread.run_sync(read_committed, self.wc_path, self.block_size, self.uuid)
            t_read = trio.current_time() - t0
            if view is None or view[0] < committed:
                log.info("volume %s: working copy behind the journal; snapshot and GC skipped", self.volume)
                return out
            pos, state, records = view
            if live is None and collect:
                marked = references(state)
            if pos > self.last_snapshot:
                next_ino = self.state.next_ino
                await trio.to_thread.run_sync(partial(vol_mod.write_snapshot, self.store, self.root, pos[0],
                                                      pos[1], state, records, next_ino))
                out.snapshot = pos
                self.last_snapshot = pos
                c.snapshot_written(c.pos.next_seq - 1 - pos[1])
                log.info("volume %s: snapshot written at segment %s (%d records; read %.2fs, written %.2fs)",
                         self.volume, pos, len(records), t_read, trio.current_time() - t0 - t_read)
            del records
            if collect:
                out.report = await self._collect(pos, marked, recorded)
                self.last_report = out.report
                self.freed_bytes += out.report.freed_bytes
            self.passes += 1
            return out
        finally:
            c.stop_recording(recorded)

    # ------------------------------------------------------------------- GC
    def _gather(self) -> tuple[Writers, PinRoots, set[tuple[bytes, int]], list[ObjectInfo]]:
        """Worker thread: seals first, then the pins (after the base: see
        fsd.volume.retention.pin_roots), then the listing (the order that makes an
        epoch seen sealed unable to add objects after the listing)."""
        failpoints.delay("gc_before_listing")
        writers, _ = observe_writers(self.store, self.root)
        pins, pinned_refs = snapshots.gc_pins(self.store, self.root, self.wall_ns())
        objects: list[ObjectInfo] = []
        for prefix in (keys.journal_prefix(self.root), keys.snapshots_prefix(self.root),
                       keys.data_prefix(self.root)):
            objects.extend(self.store.list_info(prefix))
        self._history = history.retained(
            self.store, self.root, [o for o in objects if keys.parse_journal_key(self.root, o.key)],
            [p for o in objects if (p := keys.parse_snapshot_key(self.root, o.key)) is not None],
            self.cfg.history, self.wall_ns(), self._history_refs)
        return writers, pins, pinned_refs, objects

    async def _collect(self, base: tuple[int, int], marked: set[tuple[bytes, int]],
                       recorded: set[bytes]) -> GcReport:
        epoch = self.committer.pos.epoch
        started = self.wall_ns()
        report = GcReport(volume=self.volume, root=self.root, dry_run=False, started_ns=started, base=base)
        writers, pins, pinned_refs, objects = await trio.to_thread.run_sync(self._gather)
        hist_base, hist_refs = self._history
        roots = Roots(base=base, marked=frozenset(marked | pinned_refs | hist_refs | {(h, epoch) for h in recorded}),
                      pinned_snapshots=pins.pinned, deferred=pins.deferred, history=hist_base)
        w = Writers(sealed=writers.sealed, untagged_collectable=writers.untagged_collectable, own_epoch=epoch,
                    protected=frozenset(self.bio.inflight))
        p = await trio.to_thread.run_sync(lambda: plan(self.root, objects, roots, w, now_ns=self.wall_ns(),
                                                       grace_ns=int(self.cfg.gc_grace * 1e9)))
        rest, own = split_own(p, self.root, epoch)
        deleted: list[Deletion] = []
        try:
            await self._delete(rest, deleted)
            await self._delete_own(own, recorded, deleted)
            await trio.to_thread.run_sync(snapshots.sweep_pins, self.store, pins.sweep)
            await trio.to_thread.run_sync(creating.sweep, self.store)
        except Exception as e:  # noqa: BLE001 - report it; what was deleted was garbage
            report.error = f"{type(e).__name__}: {e}"
            log.warning("volume %s: GC stopped while deleting: %s (it goes on at the next pass)", self.volume, e)
        done = GcPlan(delete=deleted)
        report.deleted = done.totals()
        report.freed_bytes = done.bytes
        report.live_objects, report.live_bytes = p.live_objects, p.live_bytes
        report.kept_young, report.kept_unsealed = p.kept_young, p.kept_unsealed
        report.kept_deferred = p.kept_deferred
        report.finished_ns = self.wall_ns()
        try:
            await trio.to_thread.run_sync(self.store.put, keys.gc_report_key(self.root), report.encode())
        except Exception as e:  # noqa: BLE001 - informational
            log.warning("volume %s: cannot store the GC report: %s", self.volume, e)
        if deleted:
            log.info("volume %s: GC freed %d objects, %d bytes (live: %d objects, %d bytes)", self.volume,
                     len(deleted), done.bytes, p.live_objects, p.live_bytes)
        return report

    async def _delete(self, items: list[Deletion], deleted: list[Deletion]) -> None:
        for i in range(0, len(items), CHUNK):
            chunk = items[i:i + CHUNK]
            await self._delete_chunk([d.key for d in chunk])
            deleted.extend(chunk)

    async def _delete_own(self, items: list[Deletion], recorded: set[bytes], deleted: list[Deletion]) -> None:
        """Our epoch's unreferenced objects, a chunk at a time: each chunk is
        re-checked and withdrawn from re-use under the commit lock."""
        for i in range(0, len(items), CHUNK):
            chunk = items[i:i + CHUNK]
            by_hash: dict[bytes, Deletion] = {}
            for d in chunk:
                dk = keys.parse_data_key(self.root, d.key)
                if dk is not None:
                    by_hash[dk[0]] = d
            async with self.committer.commit_lock:
                if self.committer.fenced:
                    return
                ok = self.bio.begin_deleting({h for h in by_hash if h not in recorded})
            try:
                await self._delete_chunk([by_hash[h].key for h in ok])
                deleted.extend(by_hash[h] for h in ok)
            finally:
                self.bio.end_deleting(ok)

    async def _delete_chunk(self, keys_: list[str]) -> None:
        if not keys_:
            return
        t0 = trio.current_time()
        await trio.to_thread.run_sync(self.store.delete_many, keys_)
        failpoints.hit("gc_between_deletions")
        pause = len(keys_) / self.cfg.delete_rate - (trio.current_time() - t0)
        if pause > 0:
            await trio.sleep(pause)
