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

import errno
import logging
import math
import random
import time
from dataclasses import dataclass, field

import trio

from fsd.data import DataLayer, merge_extents
from fsd.fencing import WriterPosition
from fsd.format import keys
from fsd.format.segment import Segment
from fsd.meta.ops import FsError, MetaOps
from fsd.meta.records import PATCH
from fsd.meta.state import BlockRef
from fsd.store.aio import AsyncStore
from fsd.store.base import NotFound, PreconditionFailed, StoreError
from fsd import failpoints
from fsd.blockio import BlockIO
from fsd.localjournal import LocalEntry, LocalJournal

log = logging.getLogger("ferry.commit")


# Inline small writes (PATCH records in the segment) instead of uploading
# their whole block: an fsync after a small write then costs one PUT.
INLINE_MAX = 64 << 10            # bytes written into one block since its last commit
PATCH_MAX_PER_BLOCK = 256 << 10  # inline bytes a block may accumulate before it is stored whole
PATCH_BUDGET = 16 << 20          # inline bytes in the whole volume's metadata
FOLD_PER_COMMIT = 8              # blocks folded back into objects per commit when over budget


@dataclass
class Batch:
    id: int
    records: list
    blocks: dict[tuple[int, int], bytes]
    nbytes: int
    first_change_ns: int = 0
    extents: dict = field(default_factory=dict)   # key -> merged written ranges, None: whole block


@dataclass
class CommitStats:
    commits: int = 0
    segments_since_snapshot: int = 0
    last_commit_ns: int = 0
    oldest_uncommitted_ns: int | None = None   # when the first uncommitted change was made
    last_error: str | None = None


def _local_pieces(batch: Batch) -> list[tuple[int, int, int | None, bytes]]:
    """What the local journal keeps of a batch's blocks: the written ranges
    when they are small (at most INLINE_MAX) or a small part of the block,
    else the whole block. Recovery turns ranges into PATCH records in one
    segment and whole blocks into data objects, so small ranges keep the
    recovery of many small fsyncs to a few PUTs."""
    out: list[tuple[int, int, int | None, bytes]] = []
    for (ino, idx), raw in batch.blocks.items():
        ext = batch.extents.get((ino, idx))
        if ext is not None:
            written = sum(e - s for s, e in ext)
            if written <= INLINE_MAX or written <= len(raw) // 2:
                out.extend((ino, idx, s, raw[s:min(e, len(raw))]) for s, e in ext if s < len(raw))
                continue
        out.append((ino, idx, None, raw))
    return out


class Committer:
    def __init__(self, *, volume: str, root: str, ops: MetaOps, data: DataLayer, bio: BlockIO,
                 astore: AsyncStore, position: WriterPosition, interval: float,
                 snapshot_every: int = 512, local: LocalJournal | None = None,
                 working_copy=None) -> None:
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
        self._queue_times: dict[int, int] = {}   # local mode: batch id -> first change, until in the store
        self._stopping = False
        self._stopped = trio.Event()
        self.local = local
        self.working_copy = working_copy    # fsd.localdb.WorkingCopy, kept equal to the journal
        self._wc_limiter = trio.CapacityLimiter(1)
        self._wake = trio.Event()
        self._progress = trio.Condition()
        self._running = False
        # Background maintenance (fsd/gc/live.py) takes this lock to see the
        # committer between commits: no upload's ref on its way into a segment,
        # the working copy equal to the last committed segment.
        self.commit_lock = trio.Lock()
        self.snapshot_due = trio.Event()     # set once `snapshot_every` segments were committed
        self._recorders: list[set[bytes]] = []
        data.on_pressure = self.request
        data.is_fenced = lambda: self.pos.fenced

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
            log.exception("volume %s: the commit pipeline failed; this mount acknowledges nothing more and "
                          "is now read-only. Unmount it and mount again to recover.", self.volume)
            self.stats.last_error = f"commit pipeline failed: {e!r}"
            self.pos.fence()
            await self._notify()
            async with self.data.space_freed:
                self.data.space_freed.notify_all()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Let the running round (and, in local mode, the upload queue) finish,
        then make run() return. Never cancel a commit half-way: its batch
        has left the dirty set and would be lost."""
        self._stopping = True
        self.request()
        await self._stopped.wait()

    async def _wait_for_work(self) -> None:
        with trio.move_on_after(self.interval):
            await self._wake.wait()
        self._wake = trio.Event()

    def _pending_anything(self) -> bool:
        return bool(self.ops.pending) or bool(self.ops.attr_dirty) or self.data.has_dirty

    def _cut(self) -> Batch | None:
        """Atomically (no await) take pending records and dirty blocks."""
        batch_id = self._next_cut
        self._next_cut += 1
        if not self._pending_anything():
            return None
        records = self.ops.take_pending()
        blocks, extents = self.data.cut(batch_id)
        first = self.stats.oldest_uncommitted_ns or time.time_ns()
        self.stats.oldest_uncommitted_ns = None
        return Batch(batch_id, records, blocks, sum(len(b) for b in blocks.values()), first, extents)

    async def _notify(self) -> None:
        async with self._progress:
            self._progress.notify_all()

    async def _cut_local(self, send) -> None:
        """Cut a batch, make it durable in the local journal, acknowledge,
        queue it for upload. If the local disk refuses (ENOSPC, EIO), the
        batch is acknowledged only once it is in the store instead."""
        await self._fold_patches()
        batch = self._cut()
        bid = self._next_cut - 1
        if batch is None:
            self._local_done = bid
            await self._notify()
            return
        entry = LocalEntry(self.pos.epoch, batch.id, batch.records, _local_pieces(batch))
        assert self.local is not None     # only run() in local mode calls this
        try:
            await trio.to_thread.run_sync(self.local.append, entry)
        except Exception as e:  # noqa: BLE001 - ENOSPC, EIO, anything: fall back to the store
            log.error("volume %s: cannot write the local journal (%s); acknowledging batch %d only "
                      "once it is in the object store", self.volume, e, batch.id)
            self.stats.last_error = f"local journal: {e}"
            self._queue_times[batch.id] = batch.first_change_ns
            await send.send(batch)
            async with self._progress:
                while self._done < batch.id and not self.pos.fenced:
                    await self._progress.wait()
        else:
            failpoints.hit("after_local_append")
            self._queue_times[batch.id] = batch.first_change_ns
            await send.send(batch)
        self._local_done = bid
        await self._notify()

    async def _uploader(self, recv) -> None:
        """Commit queued local batches in order. Whatever queued up while the
        previous upload ran goes into ONE segment, so the upload rate does
        not limit the (local) fsync rate."""
        async with recv:
            async for first in recv:
                batches = [first]
                while len(batches) < 256:
                    try:
                        batches.append(recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                ok = await self._commit_batches(batches)
                if not ok:
                    return
                assert self.local is not None
                await trio.to_thread.run_sync(self.local.remove, self.pos.epoch, [b.id for b in batches])
                await self._notify()

    async def _fold_patches(self) -> None:
        """Over the inline budget: turn the most-patched blocks back into
        whole objects (they become dirty and go out with this commit)."""
        st = self.data.state
        if st.patch_bytes <= PATCH_BUDGET // 2:
            return
        sizes = sorted(((sum(len(d) for _, d in pl), ino, idx) for ino, pm in st.patches.items()
                        for idx, pl in pm.items()), reverse=True)
        for _, ino, idx in sizes[:FOLD_PER_COMMIT]:
            try:
                await self.data.fold(ino, idx)
            except FsError:
                pass   # unreadable base: reported by reads; keep the patches

    def _plan_inline(self, batches: list[Batch], latest: dict) -> dict:
        """Which blocks of the group go inline: key -> [(offset, bytes)]."""
        st = self.data.state
        budget = PATCH_BUDGET - st.patch_bytes
        plan: dict[tuple[int, int], list[tuple[int, bytes]]] = {}
        for key, i in latest.items():
            ranges: list[tuple[int, int]] = []
            for b in batches[: i + 1]:
                if key in b.blocks:
                    ext = b.extents.get(key, None)
                    if ext is None:
                        break
                    ranges.extend(ext)
            else:
                raw = batches[i].blocks[key]
                pieces = [(s, raw[s:min(e, len(raw))]) for s, e in merge_extents(ranges) if s < len(raw)]
                n = sum(len(d) for _, d in pieces)
                have = sum(len(d) for _, d in st.block_patches(*key) or ())
                if n <= INLINE_MAX and have + n <= PATCH_MAX_PER_BLOCK and n <= budget:
                    plan[key] = pieces
                    budget -= n
        return plan

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
        """Upload the batches' blocks, then ONE segment holding, batch by
        batch, its records followed by BLOCK records for its blocks. A block
        that a later batch in the group rewrites is skipped: the later BLOCK
        record (placed after every record in between) gives the final state.
        True once durable."""
        latest: dict[tuple[int, int], int] = {}
        for i, b in enumerate(batches):
            for key in b.blocks:
                latest[key] = i
        results: list[dict[tuple[int, int], BlockRef]] = [{} for _ in batches]
        inline = self._plan_inline(batches, latest)
        inline_by_batch: list[dict] = [{} for _ in batches]
        for key, pieces in inline.items():
            inline_by_batch[latest[key]][key] = pieces

        async def up(i: int, key: tuple[int, int], raw: bytes) -> None:
            results[i][key] = await self._retry(f"upload of inode {key[0]} block {key[1]}",
                                                lambda: self.bio.upload(raw))

        async with trio.open_nursery() as n:
            for i, b in enumerate(batches):
                for key, raw in b.blocks.items():
                    if latest[key] == i and key not in inline:
                        n.start_soon(up, i, key, raw)
        failpoints.hit("after_blocks_uploaded")
        records: list = []
        for i, b in enumerate(batches):
            records.extend(b.records)
            for (ino, idx), ref in results[i].items():
                records.append(ref.record(ino, idx))
            for (ino, idx), pieces in inline_by_batch[i].items():
                records.extend([PATCH, ino, idx, off, data] for off, data in pieces)
        batch = batches[-1]
        seq = self.pos.next_seq
        seg = Segment(kind="segment", epoch=self.pos.epoch, seq=seq, created_ns=time.time_ns(),
                      records=records, reason=None, sealed_by=None, batch=batch.id)
        body = seg.encode()
        ok = await self._retry(f"journal segment {seq}", lambda: self._put_segment(seq, body))
        if not ok:
            self.pos.fence()
            log.error("volume %s: FENCED: epoch %d was sealed by a newer owner before segment %d; "
                      "this mount acknowledges nothing more and is now read-only "
                      "(fsync returns EIO). Unmount it.", self.volume, self.pos.epoch, seq)
            await self._notify()
            async with self.data.space_freed:
                self.data.space_freed.notify_all()
            return False
        failpoints.hit("after_segment_written")
        for rec in self._recorders:
            rec.update(ref.hash for res in results for ref in res.values())
        self.pos.committed(seq)
        for i, b in enumerate(batches):
            await self.data.settle(b.id, b.blocks.keys(), results[i], b.nbytes, inline_by_batch[i])
            self._queue_times.pop(b.id, None)
        self._done = batch.id
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

    async def _retry(self, what: str, fn):
        """Run `fn` until it succeeds: an unreachable store makes fsync wait,
        not fail (writers continue until the dirty limit)."""
        delay = 0.2
        attempt = 0
        while True:
            try:
                return await fn()
            except StoreError as e:
                attempt += 1
                self.stats.last_error = f"{what}: {e}"
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("volume %s: %s failed (attempt %d), retrying: %s", self.volume, what, attempt, e)
            except Exception as e:  # never let an unexpected error kill the daemon mid-commit
                attempt += 1
                self.stats.last_error = f"{what}: {e!r}"
                log.exception("volume %s: %s failed unexpectedly (attempt %d), retrying", self.volume, what, attempt)
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 10.0)

    async def drain(self) -> None:
        """Commit until nothing is dirty or pending (clean unmount), after stop()."""
        while self._pending_anything() and not self.pos.fenced:
            await self.commit_once()
