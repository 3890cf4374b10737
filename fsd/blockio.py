"""Moving blocks between memory, the local block cache and the object store.

Everything here that touches disk or network runs in worker threads under
capacity limits; the trio loop only awaits.
"""
from __future__ import annotations

import errno
import logging

import trio

from fsd.cache.blockcache import BlockCache
from fsd.format import keys
from fsd.format.dataobj import decode_block, encode_block
from fsd.format.framing import CorruptObject
from fsd.meta.ops import FsError
from fsd.meta.state import BlockRef
from fsd.store.aio import AsyncStore
from fsd.store.base import NotFound, PreconditionFailed, StoreError

log = logging.getLogger("ferry.blocks")


class BlockIO:
    """Fetch (with de-duplication of concurrent fetches) and upload blocks."""

    def __init__(self, *, volume: str, root: str, epoch: int, astore: AsyncStore, cache: BlockCache,
                 compress: bool, cpu_limiter: trio.CapacityLimiter, origin_roots: tuple[str, ...] = ()) -> None:
        self.volume = volume        # for log lines
        self.root = root            # key prefix of the volume's objects
        # Where a block with `src` k is read from: our root (0), then the
        # roots of the volumes we were cloned from. We only ever write under ours.
        self.read_roots = (root, *origin_roots)
        self.epoch = epoch          # ours: every object we upload is keyed under it
        self.astore = astore
        self.cache = cache
        self.compress = compress
        self.cpu = cpu_limiter
        self._fetching: dict[bytes, trio.Event] = {}
        # Hashes we uploaded under our own epoch. Only these are reused without
        # a PUT: an object of another epoch may be garbage that a GC is
        # deleting right now (docs/format.md, "Garbage collection").
        self.uploaded: set[bytes] = set()
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
    def is_cached_or_fetching(self, h: bytes) -> bool:
        return h in self._fetching or self.cache.contains(h)

    async def read_range(self, ino: int, idx: int, ref: BlockRef, start: int, end: int) -> bytes:
        """Bytes [start, end) of a committed block, clipped to ref.length."""
        end = min(end, ref.length)
        if start >= end:
            return b""
        data = await self._cache_call(self.cache.get_range, ref.hash, start, end)
        if data is not None:
            return data
        raw = await self.fetch(ino, idx, ref)
        return raw[start:end]

    async def fetch(self, ino: int, idx: int, ref: BlockRef) -> bytes:
        """The whole committed block (clipped to ref.length), from cache or store."""
        h = ref.hash
        while True:
            raw = await self._cache_call(self.cache.get, h)
            if raw is not None:
                return raw[: ref.length]
            ev = self._fetching.get(h)
            if ev is None:
                break
            await ev.wait()
        if ref.src >= len(self.read_roots):
            log.error("volume %s: inode %d block %d refers to origin %d, but the volume has %d origin(s)",
                      self.volume, ino, idx, ref.src, len(self.read_roots) - 1)
            raise FsError(errno.EIO)
        ev = self._fetching[h] = trio.Event()
        try:
            key = keys.data_key(self.read_roots[ref.src], h, ref.epoch)
            try:
                obj = await self.astore.get(key)
            except NotFound:
                log.error("volume %s: inode %d block %d: data object %s is missing from the store",
                          self.volume, ino, idx, key)
                raise FsError(errno.EIO) from None
            except StoreError as e:
                log.error("volume %s: inode %d block %d: cannot fetch %s: %s", self.volume, ino, idx, key, e)
                raise FsError(errno.EIO) from None
            try:
                raw = await trio.to_thread.run_sync(decode_block, obj, h, key, limiter=self.cpu)
            except CorruptObject as e:
                log.error("volume %s: inode %d block %d: data object %s is corrupt: %s",
                          self.volume, ino, idx, key, e)
                raise FsError(errno.EIO) from None
            self.bytes_fetched += len(raw)
            await self._cache_call(self.cache.put, h, raw)
            return raw[: ref.length]
        finally:
            del self._fetching[h]
            ev.set()

    # ----------------------------------------------------------------- write
    async def upload(self, raw: bytes) -> BlockRef:
        """Store one block under our epoch: encode (hash, maybe compress), keep
        a clean copy in the cache, PUT it unless we already did. Content
        addressing makes a 412 on the conditional PUT mean 'already there'
        (an earlier attempt of ours whose response was lost)."""
        h, obj = await trio.to_thread.run_sync(encode_block, raw, self.compress, limiter=self.cpu)
        self.inflight[h] = self.inflight.get(h, 0) + 1
        try:
            while h in self.deleting:
                await self._deletions_done.wait()
            if h not in self.uploaded:
                try:
                    await self.astore.put(keys.data_key(self.root, h, self.epoch), obj, if_none_match=True)
                except PreconditionFailed:
                    pass
                self.uploaded.add(h)
                self.bytes_uploaded += len(obj)
        finally:
            left = self.inflight[h] - 1
            if left:
                self.inflight[h] = left
            else:
                del self.inflight[h]
        await self._cache_call(self.cache.put, h, raw)
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
