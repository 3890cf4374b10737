"""Moving blocks between memory, the local block cache and the object store.

Everything here that touches disk or network runs in worker threads under
capacity limits; the trio loop only awaits.
"""
from __future__ import annotations

import contextlib
import errno
import logging
from collections import OrderedDict
from collections.abc import Callable

import trio

from fsd.datapath.cache.blockcache import BlockCache
from fsd.datapath.cache.filler import CacheFiller
from fsd.format import keys
from fsd.format.dataobj import HashSpec, decode_block, encode_block
from fsd.format.framing import CorruptObject
from fsd.meta.ops import FsError
from fsd.meta.state import BlockRef
from fsd.stats import ReadStats
from fsd.store.aio import AsyncStore
from fsd.store.base import NotFound, PreconditionFailed, StoreError

log = logging.getLogger("ferry.blocks")

# Recent uploads remembered by object identity (see BlockIO.upload), at most
# this many bytes of blocks: enough for the eager uploads of one commit's worth.
_BY_OBJECT_BYTES = 64 << 20


class _Upload:
    """One upload of one bytes object; `ref` is set if it succeeded. Holding
    `raw` keeps the object alive, so its id() cannot be reused meanwhile."""
    __slots__ = ("raw", "done", "ref")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.done = trio.Event()
        self.ref: BlockRef | None = None


class BlockIO:
    """Fetch (with de-duplication of concurrent fetches) and upload blocks."""

    def __init__(self, *, volume: str, root: str, epoch: int, astore: AsyncStore, cache: BlockCache,
                 filler: CacheFiller, compress: bool, content_hash: HashSpec, cpu_limiter: trio.CapacityLimiter,
                 origin_roots: tuple[str, ...] = (), recent_bytes: int = 32 << 20) -> None:
        self.volume = volume        # for log lines
        self.root = root            # key prefix of the volume's objects
        self.reads = ReadStats()    # where committed blocks were read from (metrics)
        # Where a block with `src` k is read from: our root (0), then the
        # roots of the volumes we were cloned from. We only ever write under ours.
        self.read_roots = (root, *origin_roots)
        self.epoch = epoch          # ours: every object we upload is keyed under it
        self.astore = astore
        self.cache = cache
        self.filler = filler      # copies into `cache` off the data path (fsd/datapath/cache/filler.py)
        self.compress = compress
        self.content_hash = content_hash    # the volume's (superblock): names and checks blocks
        self.cpu = cpu_limiter
        self._fetching: dict[bytes, trio.Event] = {}
        # Blocks fetched a moment ago, by hash (content-addressed, so never
        # stale): read-ahead hands its blocks to the reader from here.
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()
        self._recent_bytes = 0
        self._recent_limit = recent_bytes
        # Hashes we uploaded under our own epoch. Only these are reused without
        # a PUT: an object of another epoch may be garbage that a GC is
        # deleting right now (docs/format.md, "Garbage collection").
        self.uploaded: set[bytes] = set()
        self._by_object: OrderedDict[int, _Upload] = OrderedDict()
        self._by_object_bytes = 0
        # The owner's background GC may delete objects of our own epoch that
        # nothing references (fsd/gc/live.py). `inflight` (hash -> uploads in
        # progress) protects what an upload is about to return; a hash being
        # deleted leaves `uploaded` first, and an upload of it waits until the
        # deletion is over and then PUTs it again.
        self.inflight: dict[bytes, int] = {}
        self.deleting: set[bytes] = set()
        self._deletions_done = trio.Event()
        self.bytes_uploaded = 0
        self.bytes_fetched = 0
        self._last_cache_error: str | None = None

    # ------------------------------------------------------------------ read
    def _recent_get(self, h: bytes) -> bytes | None:
        raw = self._recent.get(h)
        if raw is not None:
            self._recent.move_to_end(h)
        return raw

    def _remember(self, h: bytes, raw: bytes) -> None:
        """Keep a fetched block in memory for the reader that asked for it (or
        will: read-ahead), so it is not read back from the cache file."""
        if h in self._recent or len(raw) > self._recent_limit:
            return
        self._recent[h] = raw
        self._recent_bytes += len(raw)
        while self._recent_bytes > self._recent_limit:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old)

    async def read_range(self, ino: int, idx: int, ref: BlockRef, start: int, end: int) -> bytes:
        """Bytes [start, end) of a committed block, clipped to ref.length."""
        end = min(end, ref.length)
        if start >= end:
            return b""
        raw = self._recent_get(ref.hash)
        if raw is not None:
            self.reads.memory += 1
            return raw[start:end]
        if ref.hash not in self._fetching:
            data = await self._cache_call(self.cache.get_range, ref.hash, start, end)
            if data is not None:
                self.reads.cache += 1
                return data
        raw = await self.fetch(ino, idx, ref)
        return raw[start:end]

    async def fetch(self, ino: int, idx: int, ref: BlockRef) -> bytes:
        """The whole committed block (clipped to ref.length): from memory (a
        block fetched a moment ago), the cache, or the store."""
        h = ref.hash
        looked_in_cache = False
        while True:
            raw = self._recent_get(h)
            if raw is not None:
                self.reads.memory += 1
                return raw[: ref.length]
            ev = self._fetching.get(h)
            if ev is not None:
                await ev.wait()     # another task is fetching it; then look again
                continue
            if looked_in_cache:
                break
            looked_in_cache = True
            raw = await self._cache_call(self.cache.get, h)
            if raw is not None:
                self.reads.cache += 1
                return raw[: ref.length]
        self._fetching[h] = trio.Event()
        return await self._from_store(ino, idx, ref)

    def prefetch(self, ino: int, idx: int, ref: BlockRef, spawn: Callable[..., None]) -> None:
        """Read-ahead: start fetching a block in the background unless it is
        local or already on its way. Registered before this returns, so a
        burst of reads asking for the same blocks starts each fetch once."""
        h = ref.hash
        if h in self._fetching or h in self._recent or self.cache.contains(h) or self.filler.pending(h):
            return
        self._fetching[h] = trio.Event()
        spawn(self._prefetch_task, ino, idx, ref)

    async def _prefetch_task(self, ino: int, idx: int, ref: BlockRef) -> None:
        # logged; a foreground read will try again and report it
        with contextlib.suppress(FsError):
            await self._from_store(ino, idx, ref)

    async def _from_store(self, ino: int, idx: int, ref: BlockRef) -> bytes:
        """GET a block whose fetch the caller registered in `_fetching`;
        waiters are released when it ends, whatever the outcome."""
        h = ref.hash
        ev = self._fetching[h]
        self.reads.store += 1           # read-ahead counts too: it is a block that was not local
        try:
            if ref.src >= len(self.read_roots):
                log.error("volume %s: inode %d block %d refers to origin %d, but the volume has %d origin(s)",
                          self.volume, ino, idx, ref.src, len(self.read_roots) - 1)
                raise FsError(errno.EIO)
            key = keys.data_key(self.read_roots[ref.src], h, ref.epoch)
            try:
                raw = await self.astore.call(lambda store: decode_block(store.get(key), h, key, self.content_hash))
            except NotFound:
                log.error("volume %s: inode %d block %d: data object %s is missing from the store",
                          self.volume, ino, idx, key)
                raise FsError(errno.EIO) from None
            except StoreError as e:
                log.error("volume %s: inode %d block %d: cannot fetch %s: %s", self.volume, ino, idx, key, e)
                raise FsError(errno.EIO) from None
            except CorruptObject as e:
                log.error("volume %s: inode %d block %d: data object %s is corrupt: %s",
                          self.volume, ino, idx, key, e)
                raise FsError(errno.EIO) from None
            self.bytes_fetched += len(raw)
            self._remember(h, raw)
            self.filler.offer(h, raw)
            return raw[: ref.length]
        finally:
            del self._fetching[h]
            ev.set()

    # ----------------------------------------------------------------- write
    async def upload(self, raw: bytes) -> BlockRef:
        """Store one block under our epoch and return its ref.

        The same bytes *object* uploaded twice (an eager upload of a full
        block, then the commit that cuts it unchanged: fsd/datapath/data.py, `sealed`)
        is encoded and PUT once; the second call waits for the first. The ref
        is reused only while its hash is still in `uploaded`: a GC may have
        deleted the object since, and then it is PUT again."""
        prev = self._by_object.get(id(raw))
        if prev is not None and prev.raw is raw:
            await prev.done.wait()
            if prev.ref is not None and prev.ref.hash in self.uploaded:
                self._forget_object(prev)
                return prev.ref
        job = _Upload(raw)
        self._forget_object(self._by_object.get(id(raw)))
        self._by_object[id(raw)] = job
        self._by_object_bytes += len(raw)
        while self._by_object_bytes > _BY_OBJECT_BYTES:
            self._forget_object(next(iter(self._by_object.values())))
        try:
            job.ref = await self._upload(raw)
            return job.ref
        finally:
            job.done.set()

    def _forget_object(self, job: _Upload | None) -> None:
        if job is not None and self._by_object.get(id(job.raw)) is job:
            del self._by_object[id(job.raw)]
            self._by_object_bytes -= len(job.raw)

    async def _upload(self, raw: bytes) -> BlockRef:
        """Encode (hash, maybe compress), PUT unless we already did, keep a
        clean copy in the cache. Content addressing makes a 412 on the
        conditional PUT mean 'already there' (an earlier attempt of ours
        whose response was lost)."""
        h, obj = await trio.to_thread.run_sync(encode_block, raw, self.compress, self.content_hash,
                                                limiter=self.cpu)
        self.inflight[h] = self.inflight.get(h, 0) + 1
        try:
            while h in self.deleting:
                await self._deletions_done.wait()
            if h not in self.uploaded:
                with contextlib.suppress(PreconditionFailed):
                    await self.astore.put(keys.data_key(self.root, h, self.epoch), obj, if_none_match=True)
                self.uploaded.add(h)
                self.bytes_uploaded += len(obj)
        finally:
            left = self.inflight[h] - 1
            if left:
                self.inflight[h] = left
            else:
                del self.inflight[h]
        self.filler.offer(h, raw)    # a clean copy, best effort
        return BlockRef(h, len(raw), self.epoch)

    # ------------------------------------------------------------------- GC
    def begin_deleting(self, hashes: set[bytes]) -> set[bytes]:
        """Of our own epoch's `hashes`, those that may be deleted now: not being
        uploaded. They leave `uploaded` (a later upload PUTs them again) and
        uploads of them wait until `end_deleting`. The caller holds the
        committer's commit lock, so no returned ref is on its way into a
        segment either."""
        ok = {h for h in hashes if h not in self.inflight}
        self.uploaded -= ok
        self.deleting |= ok
        return ok

    def end_deleting(self, hashes: set[bytes]) -> None:
        self.deleting -= hashes
        ev, self._deletions_done = self._deletions_done, trio.Event()
        ev.set()

    async def _cache_call(self, fn, *args):
        """A block cache operation in a worker thread. The cache only ever
        holds copies (dirty data lives in memory, committed data in the
        store), so a full or failing cache disk makes a miss or an uncached
        block, logged once per kind of error, never a failed read or commit."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.cpu)
        except OSError as e:       # CacheFull, EIO, EROFS, ...
            msg = f"{type(e).__name__}: {e}"
            if msg != self._last_cache_error:
                log.warning("volume %s: block cache %s failed, going on without it: %s", self.volume,
                            getattr(fn, "__name__", "operation"), msg)
                self._last_cache_error = msg
            return None
