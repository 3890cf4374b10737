"""The commit pipeline: cut a batch, upload its blocks, write one journal
segment with `If-None-Match: *`, acknowledge the fsyncs that waited for it.

Group commit: commits run one at a time; an fsync that arrives while one is
running waits for the next, which takes everything written by then. So any
number of concurrent fsyncs cost one segment PUT per round.

A commit is durable exactly when its segment exists (SPEC §4). A conflict
on the segment key means a newer epoch sealed ours: we are fenced, we
acknowledge nothing more and the mount turns read-only.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from fsd import failpoints
from fsd.datapath.blockio import BlockIO
from fsd.datapath.commitplan import INLINE_MAX, PATCH_BUDGET, Batch, plan_commit, segment_records
from fsd.datapath.data import DataLayer
from fsd.datapath.localjournal import LocalEntry, LocalJournal
from fsd.datapath.overlay import Overlay, content_length, version_bytes
from fsd.format import keys
from fsd.format.segment import Segment
from fsd.meta.ops import FsError, MetaOps
from fsd.meta.state import BlockRef
from fsd.stats import Histogram
from fsd.store.aio import AsyncStore
from fsd.store.base import NotFound, PreconditionFailed, StoreError
from fsd.tasks import Wakeup
from fsd.volume.fencing import WriterPosition

log = logging.getLogger("ferry.commit")
T = TypeVar("T")


FOLD_PER_COMMIT = 8              # blocks folded back into objects per commit when over budget
# durability=local: how long the uploader lets locally durable batches gather
# before it writes them to the store as one segment. Each segment PUT costs
# CPU in this process (and in a local S3 server) that small fsyncs compete
# for; measured with one fio writer (4 KiB randwrite + fdatasync, moto):
# 298 fsyncs/s with no wait, 392 with 50 ms, 441 with 200 ms. The wait is
# cut short when memory runs low, at unmount, and when a batch could not be
# made durable locally (its fsync waits for the store).
UPLOAD_GATHER_S = 0.1


@dataclass
class CommitStats:
    commits: int = 0
    fsync: Histogram = field(default_factory=Histogram)   # seconds an fsync waited (acknowledged ones)
    fsync_errors: int = 0                                   # fsyncs answered EIO (fenced, or failed)
    segments_since_snapshot: int = 0
    local_appends: int = 0         # durability=local: batches made durable in the local journal
    last_commit_ns: int = 0
    oldest_uncommitted_ns: int | None = None   # when the first uncommitted change was made
    last_error: str | None = None


async def _local_pieces(batch: Batch, data: DataLayer) -> list[tuple[int, int, int | None, bytes]]:
    """What the local journal keeps of a batch's blocks: the written ranges
    when they are small (at most INLINE_MAX) or a small part of the block,
    else the whole block. Recovery turns ranges into PATCH records in one
    segment and whole blocks into data objects, so small ranges keep the
    recovery of many small fsyncs to a few PUTs. Only a whole block may
    need a read (an Overlay's committed base)."""
    out: list[tuple[int, int, int | None, bytes]] = []
    for key, v in batch.blocks.items():
        ino, idx = key
        ext = batch.extents.get(key)
        length = content_length(v)
        if ext is not None:
            written = sum(e - s for s, e in ext)
            if written <= INLINE_MAX or written <= length // 2:
                for s, e in ext:
                    if s < length:
                        out.append((ino, idx, s, await data.version_slice(key, v, s, min(e, length))))
                continue
        out.append((ino, idx, None, await data.version_content(key, v)))
    return out


class Committer:
    def __init__(self, *, volume: str, root: str, ops: MetaOps, data: DataLayer, bio: BlockIO,
                 astore: AsyncStore, position: WriterPosition, interval: float,
                 wakeup: Wakeup, snapshot_every: int = 512, local: LocalJournal | None = None,
                 working_copy=None) -> None:
        """`wakeup`: what asks for a commit round now (fsync, the data layer's
        dirty pressure, unmount); the data layer was built with its `set`."""
        self.volume = volume        # for log lines
        self.root = root            # key prefix of the volume's objects
        self.ops = ops
        self.data = data
        self.bio = bio
        self.astore = astore
        self.pos = position
        self.interval = interval
        self.snapshot_every = snapshot_every
        self.stats = CommitStats()
        self._next_cut = 1          # id the next batch will get
        self._done = 0              # highest batch id durable in the store
        self._local_done = 0        # highest batch id durable locally (durability=local)
        # batch id -> its first change, from the cut until it is in the store
        # (both modes: a batch retrying through a store outage is what the
        # upload lag must show, even when nothing changed since)
        self._queue_times: dict[int, int] = {}
        self._stopping = False
        self._stopped = trio.Event()
        self.local = local
        self.working_copy = working_copy    # fsd.datapath.localdb.WorkingCopy, kept equal to the journal
        self._wc_limiter = trio.CapacityLimiter(1)
        self._wake = wakeup
        self._upload_now = Wakeup()       # durability=local: end the uploader's gathering wait
        self._progress = trio.Condition()
        self._running = False
        # Background maintenance (fsd/gc/live.py) takes this lock to see the
        # committer between commits: no upload's ref on its way into a segment,
        # the working copy equal to the last committed segment.
        self.commit_lock = trio.Lock()
        self.snapshot_due = trio.Event()     # set once `snapshot_every` segments were committed
        self._recorders: list[set[bytes]] = []
        self._folding: set[tuple[int, int]] = set()    # blocks folded whose patches have not left yet

    # -------------------------------------------------------------- requests
    def request(self) -> None:
        """Start a commit as soon as possible (fsync, dirty pressure, unmount)."""
        self._wake.set()

    def note_change(self) -> None:
        if self.stats.oldest_uncommitted_ns is None:
            self.stats.oldest_uncommitted_ns = time.time_ns()

    @property
    def fenced(self) -> bool:
        return self.pos.fenced

    def upload_lag_s(self) -> float:
        """Age of the oldest change not yet durable in the object store."""
        times = [t for t in (self.stats.oldest_uncommitted_ns, *self._queue_times.values()) if t is not None]
        return 0.0 if not times else (time.time_ns() - min(times)) / 1e9

    async def sync(self) -> None:
        """Return once everything changed before the call is durable in the store."""
        started = trio.current_time()
        try:
            await self._sync()
        except FsError:
            self.stats.fsync_errors += 1
            raise
        self.stats.fsync.observe(trio.current_time() - started)

    async def _sync(self) -> None:
        if self.pos.fenced:
            raise FsError(errno.EIO)
        target = self._next_cut
        self.request()
        async with self._progress:
            while (self._local_done if self.local is not None else self._done) < target:
                if self.pos.fenced:
                    raise FsError(errno.EIO)
                await self._progress.wait()
        if self.pos.fenced:
            raise FsError(errno.EIO)

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        """Commit every `interval` seconds or when asked, until cancelled.

        Remote durability: one loop, cut then upload, so concurrent fsyncs
        group into the next round. Local durability: a cutter persists each
        batch to the local journal (that is when fsync returns) and hands it
        to an uploader that commits batches to the store in order.

        Never raises into the mount: an unexpected error (a bug) stops
        committing and turns into errors for the writers (fsync EIO, writes
        EROFS), as fencing does, instead of a vanished mount. Nothing is
        acknowledged after it, and the epoch is left unsealed, so the next
        mount of this cache dir recovers what the journal holds."""
        try:
            if self.local is None:
                while not self.pos.fenced and not self._stopping:
                    await self._wait_for_work()
                    await self.commit_once()
                return
            send, recv = trio.open_memory_channel(math.inf)
            async with trio.open_nursery() as n:
                n.start_soon(self._uploader, recv)
                async with send:
                    while not self.pos.fenced and not self._stopping:
                        await self._wait_for_work()
                        await self._cut_local(send)
        except Exception as e:  # noqa: BLE001 - see the docstring
            await self._fail(e)
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Let the running round (and, in local mode, the upload queue) finish,
        then make run() return. Never cancel a commit half-way: its batch
        has left the dirty set and would be lost."""
        self._stopping = True
        self.request()
        self._upload_now.set()
        await self._stopped.wait()

    async def _wait_for_work(self) -> None:
        await self._wake.wait(self.interval)

    def _pending_anything(self) -> bool:
        return bool(self.ops.pending) or bool(self.ops.attr_dirty) or self.data.has_dirty

    def _cut(self) -> Batch | None:
        """Atomically (no await) take pending records and dirty blocks."""
        batch_id = self._next_cut
        self._next_cut += 1
        if not self._pending_anything():
            return None
        records = self.ops.take_pending()
        blocks, extents, whole = self.data.cut(batch_id)
        first = self.stats.oldest_uncommitted_ns or time.time_ns()
        self.stats.oldest_uncommitted_ns = None
        return Batch(batch_id, records, blocks, sum(version_bytes(b) for b in blocks.values()), first, extents,
                     whole)

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _cut_local(self, send) -> None:
        """Cut a batch, make it durable in the local journal, acknowledge,
        queue it for upload. If the local disk refuses (ENOSPC, EIO), the
        batch is acknowledged only once it is in the store instead. (Folding
        runs in the uploader: it reads whole blocks, which an fsync must not
        wait for.)"""
        batch = self._cut()
        bid = self._next_cut - 1
        if batch is None:
            self._local_done = bid
            await self._notify()
            return
        entry = LocalEntry(self.pos.epoch, batch.id, batch.records, await _local_pieces(batch, self.data))
        assert self.local is not None     # only run() in local mode calls this
        try:
            await trio.to_thread.run_sync(self.local.append, entry)
        except Exception as e:  # noqa: BLE001 - ENOSPC, EIO, anything: fall back to the store
            log.error("volume %s: cannot write the local journal (%s); acknowledging batch %d only "
                      "once it is in the object store", self.volume, e, batch.id)
            self.stats.last_error = f"local journal: {e}"
            self._queue_times[batch.id] = batch.first_change_ns
            self._upload_now.set()
            await send.send(batch)
            async with self._progress:
                while self._done < batch.id and not self.pos.fenced:
                    await self._progress.wait()
        else:
            failpoints.hit("after_local_append")
            self.stats.local_appends += 1
            self._queue_times[batch.id] = batch.first_change_ns
            if self.data.dirty_bytes + self.data.inflight_bytes >= self.data.dirty_limit // 2:
                self._upload_now.set()      # memory runs low: upload now, not after the gathering wait
            await send.send(batch)
        self._local_done = bid
        await self._notify()

    async def _uploader(self, recv) -> None:
        """Commit queued local batches in order. Whatever queued up while the
        previous upload ran goes into ONE segment, so the upload rate does
        not limit the (local) fsync rate; and it lets batches gather for
        `UPLOAD_GATHER_S` first, so a stream of small fsyncs costs a few PUTs
        a second, not one each."""
        async with recv:
            async for first in recv:
                if not self._stopping:
                    await self._upload_now.wait(UPLOAD_GATHER_S)
                batches = [first]
                while len(batches) < 256:
                    try:
                        batches.append(recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                ok = await self._commit_batches(batches)
                if not ok:
                    return
                await self._fold_patches()          # the folded blocks go out with a later batch
                assert self.local is not None
                await trio.to_thread.run_sync(self.local.remove, self.pos.epoch, [b.id for b in batches])
                await self._notify()

    async def _fold_patches(self) -> None:
        """Over half the inline budget: turn the most-patched blocks back into
        whole objects (they become dirty and go out with the next commit).

        Blocks folded earlier keep their patches until their commit settles;
        they count as already on their way out, so a round folds only what
        is still needed (it used to fold FOLD_PER_COMMIT more blocks in every
        round until the first folds settled: with small fsyncs in a loop,
        hundreds of needless 1 MiB reads and uploads a second)."""
        st = self.data.state
        if st.patch_bytes <= PATCH_BUDGET // 2:
            return
        folding = 0
        for key in list(self._folding):
            pl = st.block_patches(*key)
            if pl and (key in self.data.dirty or key in self.data.inflight):
                folding += sum(len(d) for _, d in pl)
            else:
                self._folding.discard(key)      # settled (or dropped): its patches are gone
        excess = st.patch_bytes - folding - PATCH_BUDGET // 2
        if excess <= 0:
            return
        sizes = sorted(((sum(len(d) for _, d in pl), ino, idx) for ino, pm in st.patches.items()
                        for idx, pl in pm.items() if (ino, idx) not in self._folding), reverse=True)
        for size, ino, idx in sizes[:FOLD_PER_COMMIT]:
            if excess <= 0:
                break
            # unreadable base: reported by reads; keep the patches
            with contextlib.suppress(FsError):
                if await self.data.fold(ino, idx):
                    self._folding.add((ino, idx))
                    excess -= size

    async def commit_once(self) -> bool:
        """One remote group-commit round. Returns False if there was nothing to do."""
        if self.pos.fenced:
            return False
        await self._fold_patches()
        batch = self._cut()
        if batch is None:
            # Nothing changed: everyone waiting is already durable.
            self._done = self._local_done = self._next_cut - 1
            await self._notify()
            return False
        self._queue_times[batch.id] = batch.first_change_ns
        ok = await self._commit_batch(batch)
        if ok:
            self._local_done = max(self._local_done, batch.id)
        return ok

    async def _commit_batch(self, batch: Batch) -> bool:
        return await self._commit_batches([batch])

    def record_refs(self) -> set[bytes]:
        """From now on, add the hash of every data object referenced by a
        committed segment to the returned set (call with `commit_lock` held;
        stop with `stop_recording`)."""
        rec: set[bytes] = set()
        self._recorders.append(rec)
        return rec

    def stop_recording(self, rec: set[bytes]) -> None:
        self._recorders = [r for r in self._recorders if r is not rec]

    async def _commit_batches(self, batches: list[Batch]) -> bool:
        async with self.commit_lock:
            return await self._commit_batches_locked(batches)

    async def _commit_batches_locked(self, batches: list[Batch]) -> bool:
        """Execute the group's plan (fsd/datapath/commitplan.py): upload its blocks, then
        write ONE segment, then settle each batch. True once durable; False when
        fenced (a newer owner sealed our epoch, before or during the round)."""
        st = self.data.state
        existing = {key: sum(len(d) for _, d in st.block_patches(*key) or ())
                    for b in batches for key in b.blocks}
        plan = plan_commit(batches, st.patch_bytes, existing)
        uploaded: list[dict[tuple[int, int], BlockRef]] = [{} for _ in batches]

        async def up(i: int, key: tuple[int, int], v: bytes | Overlay) -> None:
            raw = await self.data.version_content(key, v)
            ref = await self._retry(f"upload of inode {key[0]} block {key[1]}", lambda: self.bio.upload(raw))
            if ref is not None:
                uploaded[i][key] = ref

        async with trio.open_nursery() as n:
            for i, key in plan.uploads:
                n.start_soon(up, i, key, batches[i].blocks[key])
        if self.pos.fenced:
            return await self._fenced_during(f"the uploads of segment {self.pos.next_seq}")
        failpoints.hit("after_blocks_uploaded")
        records = segment_records(batches, plan, uploaded)
        seq = self.pos.next_seq
        seg = Segment(kind="segment", epoch=self.pos.epoch, seq=seq, created_ns=time.time_ns(),
                      records=records, reason=None, sealed_by=None, batch=plan.batch_id)
        body = seg.encode()
        ok = await self._retry(f"journal segment {seq}", lambda: self._put_segment(seq, body))
        if not ok:
            self.pos.fence()
            return await self._fenced_during(f"segment {seq}")
        failpoints.hit("after_segment_written")
        for rec in self._recorders:
            rec.update(ref.hash for res in uploaded for ref in res.values())
        self.pos.committed(seq)
        for i, b in enumerate(batches):
            await self.data.settle(b.id, b.blocks.keys(), uploaded[i], b.nbytes, plan.inline[i])
            self._queue_times.pop(b.id, None)
        self._done = plan.batch_id
        self.stats.commits += 1
        self.stats.segments_since_snapshot += 1
        self.stats.last_commit_ns = time.time_ns()
        self.stats.last_error = None
        await self._notify()
        if self.working_copy is not None:
            try:
                await trio.to_thread.run_sync(self.working_copy.apply_segment, records,
                                              (self.pos.epoch, seq), limiter=self._wc_limiter)
            except Exception as e:  # noqa: BLE001 - an accelerator: disable it, the store is the truth
                log.warning("volume %s: local working copy disabled after an error: %r", self.volume, e)
                self.working_copy = None
        if self.stats.segments_since_snapshot >= self.snapshot_every:
            self.snapshot_due.set()      # written off the commit path (fsd/gc/live.py)
        return True

    def is_quiet(self) -> bool:
        """Nothing changed since the last commit: the live metadata equals the
        replay of the journal up to the last committed segment."""
        return not self._pending_anything() and not self.data.inflight and not self._queue_times

    def snapshot_written(self, segments_since: int) -> None:
        """A snapshot covers all but the last `segments_since` committed segments."""
        self.stats.segments_since_snapshot = segments_since
        if segments_since < self.snapshot_every:
            self.snapshot_due = trio.Event()

    async def _put_segment(self, seq: int, body: bytes) -> bool:
        key = keys.journal_key(self.root, self.pos.epoch, seq)
        failpoints.bug("segment_put")
        pause = failpoints.delay_seconds("segment_put")      # tests: a slow store, once
        if pause:
            await trio.sleep(pause)
        try:
            await self.astore.put(key, body, if_none_match=True)
            return True
        except PreconditionFailed:
            # Either a newer owner sealed us, or an earlier attempt of this very
            # PUT succeeded and only its response was lost. Tell them apart.
            try:
                existing = await self.astore.get(key)
            except NotFound:
                raise StoreError(f"segment {key} vanished after a conflict; retrying") from None
            return existing == body

    async def _fenced_during(self, what: str) -> bool:
        """The epoch was sealed by a newer owner: acknowledge nothing more, wake everyone."""
        log.error("volume %s: FENCED: epoch %d was sealed by a newer owner before %s; "
                  "this mount acknowledges nothing more and is now read-only "
                  "(fsync returns EIO). Unmount it.", self.volume, self.pos.epoch, what)
        await self._notify()
        async with self.data.space_freed:
            self.data.space_freed.notify_all()
        return False

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T | None:
        """Run `fn` until it succeeds, retrying store errors only: an unreachable
        store makes fsync wait, not fail (writers continue until the dirty limit).
        None once the epoch is fenced (checked before every attempt). Anything
        but a store error is a bug: it propagates, and run() turns the mount
        read-only (fsync EIO) instead of retrying it forever."""
        delay = 0.2
        attempt = 0
        while True:
            if self.pos.fenced:
                return None
            try:
                return await fn()
            except StoreError as e:
                attempt += 1
                self.stats.last_error = f"{what}: {e}"
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("volume %s: %s failed (attempt %d), retrying: %s", self.volume, what, attempt, e)
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)

    async def _fail(self, e: BaseException) -> None:
        """A bug in the pipeline: stop committing, turn the mount read-only (see run())."""
        log.error("volume %s: the commit pipeline failed; this mount acknowledges nothing more and "
                  "is now read-only. Unmount it and mount again to recover.", self.volume, exc_info=e)
        self.stats.last_error = f"commit pipeline failed: {e!r}"
        self.pos.fence()
        await self._notify()
        async with self.data.space_freed:
            self.data.space_freed.notify_all()

    async def drain(self) -> None:
        """Commit until nothing is dirty or pending (clean unmount), after stop().
        A bug here leaves the epoch unsealed, like one in run()."""
        try:
            while self._pending_anything() and not self.pos.fenced:
                await self.commit_once()
        except Exception as e:  # noqa: BLE001 - see _fail
            await self._fail(e)
