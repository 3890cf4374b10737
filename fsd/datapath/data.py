"""File contents: dirty block buffers in memory, blocks being committed, and
committed blocks fetched through `BlockIO`.

A block of a file is, in order of precedence:
  1. dirty     - written since the last commit cut (a bytearray we own),
  2. in flight - cut into a commit batch, frozen while it uploads,
  3. committed - `state.blocks[ino][idx]`, a content-addressed object, with
                 any inline patches of `state.patches` laid over it,
  4. a hole    - reads as zeros.
Writes never modify an in-flight buffer; they copy it into a new dirty one.

With `durability=local` several batches can be in flight at once (the
cutter runs ahead of the uploader), so one block may be in flight in more
than one batch. Reads see the newest version (`inflight`); the committed
state must still receive every batch's BLOCK/PATCH in journal order
(`unsettled`), or a later batch's PATCH would be laid over a stale base
(issue 7: acknowledged bytes read back as zeros after a remount).

Each dirty buffer also records which byte ranges were written since it was
made from the committed (or in-flight) content: the committer sends small
changes inline in the journal segment (PATCH records) instead of uploading
the whole block, so an fsync after a small write costs one PUT, not two.

A small write to a block that is not dirty neither reads nor copies the
block: it starts an `Overlay` (fsd/datapath/overlay.py) that holds only the
written bytes over the block's in-flight version or, if none, over its
committed state captured by value; small fsyncs in a loop then cost a few
KiB each, not a 1 MiB read or copy at the write and another at the cut.
"""
from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Iterator

import trio

from fsd.datapath.blockio import BlockIO
from fsd.datapath.commitplan import merge_extents
from fsd.datapath.overlay import (
    OVERLAY_MAX,
    BaseNeeded,
    CommittedBase,
    Overlay,
    Version,
    committed_bottom,
    content,
    content_length,
    content_slice,
    version_bytes,
)
from fsd.meta.ops import FsError, MetaOps
from fsd.meta.records import PATCH
from fsd.meta.state import BlockRef
from fsd.tasks import Background

Key = tuple[int, int]
# Full blocks being uploaded ahead of their commit, at most this many bytes:
# enough requests in flight to keep the store busy (measured on moto: 16 x 1
# MiB gave 104 MiB/s, 32 gave 110, 64 no more), bounded in memory.
EAGER_BYTES = 32 << 20
READAHEAD_BYTES = 16 << 20     # how far ahead of a sequential reader blocks are fetched, at most
Extents = list[tuple[int, int]] | None     # written [start, end) ranges; None: the whole buffer


def overlay(base: bytes, patches: list[tuple[int, bytes]]) -> bytes:
    """`base` with each (offset, data) laid over it in order; gaps read as zeros."""
    buf = bytearray(base)
    for off, data in patches:
        if off > len(buf):
            buf.extend(bytes(off - len(buf)))
        buf[off:off + len(data)] = data
    return bytes(buf)


def split_range(off: int, size: int, bs: int) -> Iterator[tuple[int, int, int]]:
    """(block index, offset in block, length) pieces covering [off, off+size)."""
    end = off + size
    while off < end:
        idx, boff = divmod(off, bs)
        n = min(bs - boff, end - off)
        yield idx, boff, n
        off += n


def punch_plan(off: int, length: int, size: int, bs: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Punching [off, off+length) out of a file of `size` bytes: the whole
    blocks [first, first+count) that become holes, and the (offset, length)
    pieces at the edges that must be written as zeros instead. Nothing past
    `size` is touched (a punch never changes the size); the file's partial
    last block counts as whole when the range reaches the end of the file."""
    end = min(off + length, size)
    if end <= off:
        return 0, 0, []
    first = -(-off // bs)
    stop = end // bs if end < size else -(-size // bs)
    if first >= stop:
        return 0, 0, [(off, end - off)]
    edges = [(off, first * bs - off)] if off < first * bs else []
    if stop * bs < end:
        edges.append((stop * bs, end - stop * bs))
    return first, stop - first, edges


class DataLayer:
    def __init__(self, ops: MetaOps, bio: BlockIO, block_size: int, dirty_limit: int, *,
                 request_commit: Callable[[], None] = lambda: None,
                 is_fenced: Callable[[], bool] = lambda: False,
                 background: Background | None = None) -> None:
        """`request_commit`: start a commit now (dirty pressure); `is_fenced`: the
        mount may acknowledge nothing more; `background`: where eager uploads and
        read-ahead run (None: never, as in tools and tests that do not serve)."""
        self.ops = ops
        self.state = ops.state
        self.bio = bio
        self.bs = block_size
        self.dirty_limit = dirty_limit
        # A dirty buffer is a bytearray, the bytes of a write that replaced
        # the whole block (no copy made), or an Overlay of small writes over
        # the in-flight or committed content (`_write_piece`); `_mutable`
        # turns a whole-block write into a bytearray, `_materialize` an Overlay.
        self.dirty: dict[Key, Version] = {}
        self.extents: dict[Key, Extents] = {}     # per dirty key: what was written into it
        # Dirty keys to be stored whole although their written ranges are
        # known: folded blocks (`fold`). Their content did not change, so the
        # local journal keeps only what was written into them since.
        self.store_whole: set[Key] = set()
        self.inflight: dict[Key, tuple[int, bytes | Overlay]] = {}    # newest in-flight version: what reads see
        # Per key, the in-flight batches whose commit must still reach the
        # committed state (in journal order). A truncate or delete of the key
        # empties it: memory already holds the later TRUNC/INODE_DEL, which
        # in the journal follows those batches' BLOCK records.
        self.unsettled: dict[Key, set[int]] = {}
        self.dirty_bytes = 0
        self.inflight_bytes = 0
        self.bytes_written = 0          # by write(), since the mount (metrics)
        self.space_freed = trio.Condition()
        self.on_pressure = request_commit
        self.is_fenced = is_fenced
        # nursery.start_soon, set by the mount once its nursery runs: read-ahead, eager uploads
        self.background = background
        # Read-ahead window in blocks, per inode: a sequential reader's window
        # starts at 2 blocks and doubles with each read that continues the
        # stream, up to READAHEAD_BYTES (measured on moto: 8 MiB ahead gave
        # 178 MiB/s cold, 16 MiB 195); a read elsewhere starts it again.
        self.readahead_max = max(2, READAHEAD_BYTES // block_size)
        self._ra_window: dict[int, int] = {}
        # Start a commit early once this much is dirty, so uploads overlap
        # with further writes instead of piling up until fsync.
        self.commit_trigger = min(dirty_limit // 4, 16 * block_size)
        # Full blocks are uploaded as soon as they fill (bounded), so the store
        # is kept busy while the writer goes on; the commit then finds them
        # already stored (content addressing) and only writes the segment.
        self.eager_slots = trio.Semaphore(max(2, EAGER_BYTES // block_size))
        # The snapshot an eager upload took of a full block, by key. If the
        # block is unchanged when the commit cuts it, the cut reuses that very
        # object, and BlockIO recognises it: the block is hashed, encoded and
        # PUT once, not twice (fsd/datapath/blockio.py, `upload`).
        self.sealed: dict[Key, bytes] = {}
        self._last_read_end: dict[int, int] = {}

    # ------------------------------------------------------------------ read
    async def read(self, ino: int, off: int, size: int) -> bytes:
        inode = self.state.inodes.get(ino)
        if inode is None:
            raise FsError(errno.ENOENT)
        size = max(0, min(size, inode.size - off))
        if size == 0:
            return b""
        if self._last_read_end.get(ino) == off:
            window = self._ra_window[ino] = min(self.readahead_max, 2 * self._ra_window.get(ino, 1))
            self._read_ahead(ino, (off + size) // self.bs + 1, window, inode.size)
        elif off == 0:
            window = self._ra_window[ino] = min(self.readahead_max, 2)
            self._read_ahead(ino, (off + size) // self.bs + 1, window, inode.size)
        else:
            self._ra_window.pop(ino, None)
        self._last_read_end[ino] = off + size
        parts: list[bytes] = []
        for idx, boff, n in split_range(off, size, self.bs):
            key = (ino, idx)
            buf = self.dirty.get(key)
            if buf is None:
                fl = self.inflight.get(key)
                if fl is not None:
                    chunk = await self.version_slice(key, fl[1], boff, boff + n)
                elif self.state.block_patches(ino, idx):
                    chunk = (await self.committed_block(ino, idx))[boff:boff + n]
                else:
                    ref = self.state.blocks.get(ino, {}).get(idx)
                    chunk = b"" if ref is None else await self.bio.read_range(ino, idx, ref, boff, boff + n)
            else:
                chunk = await self.version_slice(key, buf, boff, boff + n)
            if len(chunk) < n:
                chunk = chunk + bytes(n - len(chunk))
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @property
    def _background_runs(self) -> bool:
        return self.background is not None and self.background.running

    def _eager_upload(self, key: Key, snap: bytes) -> None:
        """Upload a full block now, from `snap` (its content as of now)."""
        try:
            self.eager_slots.acquire_nowait()
        except trio.WouldBlock:
            return   # enough in flight: the commit will upload this one
        assert self.background is not None     # the caller checked it runs
        self.sealed[key] = snap
        self.background.start_soon(self._eager_task, snap)

    async def _eager_task(self, raw: bytes) -> None:
        try:
            await self.bio.upload(raw)
        except Exception:  # noqa: BLE001 - best effort; the commit uploads it with retries
            pass
        finally:
            self.eager_slots.release()

    def _read_ahead(self, ino: int, first: int, window: int, file_size: int) -> None:
        """Sequential reader: fetch the next blocks into the cache in the
        background, so cold sequential reads stream at store bandwidth."""
        if not self._background_runs:
            return
        assert self.background is not None
        blocks = self.state.blocks.get(ino)
        if not blocks:
            return
        last = min(first + window, (file_size + self.bs - 1) // self.bs)
        for idx in range(first, last):
            ref = blocks.get(idx)
            if ref is not None:
                self.bio.prefetch(ino, idx, ref, self.background.start_soon)

    async def committed_block(self, ino: int, idx: int) -> bytes:
        """The committed content of a block: its object (if any) with its
        inline patches laid over it."""
        ref = self.state.blocks.get(ino, {}).get(idx)
        patches = self.state.block_patches(ino, idx)
        base = b"" if ref is None else await self.bio.fetch(ino, idx, ref)
        return overlay(base, list(patches)) if patches else base

    async def _bottom(self, key: Key, v: Version) -> bytes | None:
        """The content of the CommittedBase `v`'s chain ends in (None: it
        ends in a version held in memory)."""
        cb = committed_bottom(v)
        if cb is None:
            return None
        raw = b"" if cb.ref is None else await self.bio.fetch(key[0], key[1], cb.ref)
        return overlay(raw, list(cb.patches)) if cb.patches else raw

    async def version_content(self, key: Key, v: Version) -> bytes:
        """The whole content of a dirty or in-flight version of block `key`."""
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        return content(v, await self._bottom(key, v))

    async def version_slice(self, key: Key, v: Version, start: int, end: int) -> bytes:
        """Bytes [start, end) of a version; its committed base is read only
        when the range is not covered by bytes written since."""
        if isinstance(v, (bytes, bytearray)):
            return bytes(v[start:end])
        try:
            return content_slice(v, start, end)
        except BaseNeeded:
            return content_slice(v, start, end, await self._bottom(key, v))

    async def _base(self, ino: int, idx: int) -> bytearray:
        """Current content of a block as a new mutable buffer."""
        while True:
            fl = self.inflight.get((ino, idx))
            if fl is not None:
                raw = await self.version_content((ino, idx), fl[1])
                if self.inflight.get((ino, idx)) is fl:     # (an in-flight version is immutable)
                    return bytearray(raw)
                continue
            ref = self.state.blocks.get(ino, {}).get(idx)
            patches = self.state.block_patches(ino, idx)
            npatches = len(patches) if patches else 0
            if ref is None and not npatches:
                return bytearray()
            raw = await self.committed_block(ino, idx)
            # Re-check: a truncate or commit may have changed the block meanwhile.
            now_patches = self.state.block_patches(ino, idx)
            if (self.state.blocks.get(ino, {}).get(idx) is ref and (ino, idx) not in self.inflight
                    and now_patches is patches and (len(now_patches) if now_patches else 0) == npatches):
                return bytearray(raw)

    # ----------------------------------------------------------------- write
    async def wait_for_room(self) -> None:
        """Backpressure: writers wait while dirty + in-flight data is at its limit."""
        if self.dirty_bytes + self.inflight_bytes < self.dirty_limit:
            return
        async with self.space_freed:
            while self.dirty_bytes + self.inflight_bytes >= self.dirty_limit:
                if self.is_fenced():
                    raise FsError(errno.EROFS)
                self.on_pressure()
                await self.space_freed.wait()

    async def write(self, ino: int, off: int, data: bytes, now_ns: int) -> int:
        if ino not in self.state.inodes:
            raise FsError(errno.ENOENT)
        await self.wait_for_room()
        mv = memoryview(data)
        pos = 0
        for idx, boff, n in split_range(off, len(data), self.bs):
            key = (ino, idx)
            if boff == 0 and n == self.bs == len(data) and type(data) is bytes:
                # This write replaces the whole block: its bytes object becomes
                # the dirty buffer as it is, and its own snapshot for the eager
                # upload. A later partial write copies it first (`_mutable`).
                old = self.dirty.get(key)
                self.dirty[key] = data
                self.extents[key] = None
                self.sealed.pop(key, None)
                self.dirty_bytes += n - (version_bytes(old) if old is not None else 0)
                if self._background_runs:
                    self._eager_upload(key, data)
                pos += n
                continue
            await self._write_piece(ino, idx, boff, mv[pos:pos + n])
            pos += n
        self.ops.note_write(ino, off + len(data), now_ns)
        self.bytes_written += len(data)
        if self.dirty_bytes >= self.commit_trigger:
            self.on_pressure()
        return len(data)

    async def _write_piece(self, ino: int, idx: int, boff: int, piece: memoryview) -> None:
        """Write `piece` at `boff` into block `idx` (at most the rest of the block)."""
        key = (ino, idx)
        n = len(piece)
        while True:
            cur = self.dirty.get(key)
            if isinstance(cur, Overlay):
                if cur.nbytes + n <= OVERLAY_MAX:
                    self._overlay_put(key, cur, boff, bytes(piece))
                    return
                await self._materialize(key, cur)
                if ino not in self.state.inodes:
                    raise FsError(errno.ENOENT)
                continue                       # look again: now a whole buffer (or changed meanwhile)
            if cur is not None:
                buf = self._mutable(key)
                break
            existing = self.inflight.get(key)
            ref = self.state.blocks.get(ino, {}).get(idx)
            if n <= OVERLAY_MAX and n < self.bs:
                # A small write: keep just its bytes, over the in-flight version
                # or the committed state (overlay.py); nothing is read or copied.
                patches = self.state.block_patches(ino, idx)
                under: bytes | Overlay | CommittedBase | None = (
                    existing[1] if existing is not None
                    else CommittedBase(ref, tuple(patches or ())) if ref is not None or patches else None)
                if under is not None:
                    ov = Overlay(under)
                    self.dirty[key] = ov
                    self.extents[key] = []
                    self._overlay_put(key, ov, boff, bytes(piece))
                    return
            covers = boff == 0 and (
                (existing is None and (ref is None or ref.length <= n)
                 and self.state.block_length(ino, idx) <= n)
                or (existing is not None and content_length(existing[1]) <= n)
            )
            base = bytearray() if covers else await self._base(ino, idx)
            if ino not in self.state.inodes:
                raise FsError(errno.ENOENT)
            if key in self.dirty:              # another writer created it meanwhile: look again
                continue
            buf = self.dirty[key] = base
            self.extents[key] = []
            self.dirty_bytes += len(base)
            break
        self._put(key, buf, boff, piece)
        if boff + n == self.bs and self._background_runs:
            self._eager_upload(key, bytes(buf))

    async def _materialize(self, key: Key, ov: Overlay) -> None:
        """Turn the dirty Overlay `ov` of `key` into a whole buffer (its
        written ranges stay recorded), unless it changed meanwhile."""
        gen = ov.gen
        raw = await self.version_content(key, ov)
        if self.dirty.get(key) is ov and ov.gen == gen:
            buf = bytearray(raw)
            self.dirty[key] = buf
            self.dirty_bytes += len(buf) - ov.nbytes

    def truncate(self, ino: int, size: int) -> None:
        """Mirror a size change (already applied by MetaOps.setattr) in the buffers."""
        cut_idx, rem = divmod(size, self.bs)
        for key in [k for k in self.dirty if k[0] == ino and (k[1] > cut_idx or (k[1] == cut_idx and rem == 0))]:
            self.dirty_bytes -= version_bytes(self.dirty.pop(key))
            self.extents.pop(key, None)
        for key in [k for k in self.inflight if k[0] == ino and (k[1] > cut_idx or (k[1] == cut_idx and rem == 0))]:
            del self.inflight[key]
        for key in [k for k in self.unsettled if k[0] == ino and (k[1] > cut_idx or (k[1] == cut_idx and rem == 0))]:
            del self.unsettled[key]
        if rem:
            # The block the new end falls in. If the cut clips content that
            # is in flight, its older batches no longer settle into memory
            # (the TRUNC already did), so the block is committed whole next.
            key = (ino, cut_idx)
            cur = self.dirty.get(key)
            if isinstance(cur, Overlay):
                if content_length(cur) > rem:
                    self.dirty_bytes -= cur.cut_at(rem)
                    self.extents[key] = None
                    self.unsettled.pop(key, None)
            elif cur is not None:
                buf = self._mutable(key)
                if len(buf) > rem:
                    self.dirty_bytes -= len(buf) - rem
                    del buf[rem:]
                    self.extents[key] = None
                    self.unsettled.pop(key, None)
            elif key in self.inflight:
                # The in-flight version has bytes past the new end; replace it by
                # a clipped dirty one so they can never reappear if the file grows.
                self.dirty[key] = Overlay(self.inflight.pop(key)[1], clip=rem)
                self.extents[key] = None
                self.unsettled.pop(key, None)

    async def punch(self, ino: int, off: int, length: int, now_ns: int) -> None:
        """Make [off, off+length) read as zeros, keeping the size: whole
        blocks become holes (their objects become garbage for GC), partial
        ones get zeros written (`punch_plan`)."""
        inode = self.state.inodes.get(ino)
        if inode is None:
            raise FsError(errno.ENOENT)
        first, count, edges = punch_plan(off, length, inode.size, self.bs)
        for o, n in edges:
            await self.write(ino, o, bytes(n), now_ns)
        if count:
            def hit(k: Key) -> bool:
                return k[0] == ino and first <= k[1] < first + count
            uncommitted = any(hit(k) for k in self.unsettled) or any(hit(k) for k in self.inflight)
            self._forget_blocks(ino, first, count)
            self.ops.punch(ino, first, count, now_ns, uncommitted=uncommitted)

    def _forget_blocks(self, ino: int, first: int, count: int) -> None:
        """Drop buffers of blocks [first, first+count): as for a truncate, an
        in-flight batch's BLOCK records precede the HOLE in the journal, so
        they must not settle into memory after it."""
        def hit(k: Key) -> bool:
            return k[0] == ino and first <= k[1] < first + count
        for key in [k for k in self.dirty if hit(k)]:
            self.dirty_bytes -= version_bytes(self.dirty.pop(key))
            self.extents.pop(key, None)
        for key in [k for k in self.inflight if hit(k)]:
            del self.inflight[key]
        for key in [k for k in self.unsettled if hit(k)]:
            del self.unsettled[key]

    def restore_dirty(self, ino: int, idx: int, raw: bytes) -> None:
        """Recovery: a block from the local journal becomes dirty again."""
        old = self.dirty.pop((ino, idx), None)
        if old is not None:
            self.dirty_bytes -= version_bytes(old)
        self.dirty[(ino, idx)] = bytearray(raw)
        self.extents[(ino, idx)] = None
        self.dirty_bytes += len(raw)

    async def restore_range(self, ino: int, idx: int, off: int, piece: bytes) -> None:
        """Recovery: bytes a crashed mount had written into a block (and
        journaled locally) are written again, over the block's content as of
        the records already re-applied. Attributes are not touched: those
        records carry them."""
        if ino not in self.state.inodes:
            return
        key = (ino, idx)
        cur = self.dirty.get(key)
        if isinstance(cur, Overlay):
            await self._materialize(key, cur)
        if key not in self.dirty:
            base = await self._base(ino, idx)
            if key not in self.dirty:
                self.dirty[key] = base
                self.extents[key] = []
                self.dirty_bytes += len(base)
        self._put(key, self._mutable(key), off, piece)

    def _mutable(self, key: Key) -> bytearray:
        """The dirty buffer of `key` as a bytearray (copying a whole-block
        write's bytes the first time it is changed in part, or laying an
        Overlay onto a copy of its in-flight base). The written ranges
        recorded so far stay as they were."""
        buf = self.dirty[key]
        if isinstance(buf, Overlay):     # callers materialize overlays first (it may read)
            raise AssertionError(f"block {key}: an Overlay where a whole buffer was expected")
        if not isinstance(buf, bytearray):
            buf = self.dirty[key] = bytearray(buf)
            self.sealed.pop(key, None)
        return buf

    def _overlay_put(self, key: Key, ov: Overlay, off: int, piece: bytes) -> None:
        """Add a written piece to the dirty Overlay of `key` and remember its range."""
        ov.add(off, piece)
        ext = self.extents.get(key)
        if ext is not None:
            ext.append((off, off + len(piece)))
            if len(ext) > 64:
                ext[:] = merge_extents(ext)
        self.dirty_bytes += len(piece)

    def _put(self, key: Key, buf: bytearray, off: int, piece) -> None:
        """Lay `piece` into dirty buffer `buf` at `off` (zero-filling a gap)
        and remember the range as written."""
        old = len(buf)
        if off > old:
            buf.extend(bytes(off - old))
        buf[off:off + len(piece)] = piece
        self.sealed.pop(key, None)
        ext = self.extents.get(key)
        if ext is not None:
            ext.append((off, off + len(piece)))
            if len(ext) > 64:
                ext[:] = merge_extents(ext)
        self.dirty_bytes += len(buf) - old

    async def fold(self, ino: int, idx: int) -> bool:
        """Make a block with inline patches dirty as a whole, so the next
        commit stores it as one object and its patches leave the metadata."""
        key = (ino, idx)
        if key in self.dirty or key in self.inflight or not self.state.block_patches(ino, idx):
            return False
        base = await self._base(ino, idx)
        if key in self.dirty or ino not in self.state.inodes:
            return False
        self.dirty[key] = base
        self.extents[key] = []
        self.store_whole.add(key)
        self.dirty_bytes += len(base)
        return True

    def drop_inode(self, ino: int) -> None:
        self._last_read_end.pop(ino, None)
        self._ra_window.pop(ino, None)
        for key in [k for k in self.dirty if k[0] == ino]:
            self.dirty_bytes -= version_bytes(self.dirty.pop(key))
            self.extents.pop(key, None)
        for key in [k for k in self.inflight if k[0] == ino]:
            del self.inflight[key]
        for key in [k for k in self.unsettled if k[0] == ino]:
            del self.unsettled[key]

    # ---------------------------------------------------------------- commit
    def cut(self, batch_id: int) -> tuple[dict[Key, bytes | Overlay], dict[Key, Extents], set[Key]]:
        """Freeze every dirty block into batch `batch_id` (synchronous, atomic
        with MetaOps.take_pending on the single trio thread). Returns the
        blocks, per block the ranges written into it (merged), and the
        blocks to store whole although their ranges are known (folded). An
        Overlay is frozen as it is: nothing changes it once it left `dirty`."""
        batch: dict[Key, bytes | Overlay] = {}
        extents: dict[Key, Extents] = {}
        for key, buf in self.dirty.items():
            snap = self.sealed.get(key)
            frozen: bytes | Overlay
            if isinstance(buf, (bytes, Overlay)):
                frozen = buf     # a whole-block write, never changed since: immutable already
            elif snap is not None and snap == buf:
                # (The comparison is cheap next to a copy and a second upload,
                # and makes the reuse safe whatever changed the buffer since.)
                frozen = snap
            else:
                frozen = bytes(buf)
            batch[key] = frozen
            ext = self.extents.get(key)
            extents[key] = None if ext is None else merge_extents(ext)
            self.inflight[key] = (batch_id, frozen)
            self.unsettled.setdefault(key, set()).add(batch_id)
        whole = self.store_whole & batch.keys()
        self.inflight_bytes += self.dirty_bytes
        self.store_whole = set()
        self.dirty = {}
        self.extents = {}
        self.sealed = {}
        self.dirty_bytes = 0
        return batch, extents, whole

    async def settle(self, batch_id: int, keys: Iterable[Key], results: dict[Key, BlockRef], nbytes: int,
                     inline: dict[Key, list[tuple[int, bytes]]] | None = None) -> None:
        """The batch's segment is durable: apply its committed refs (or
        inline patches) to the state, and drop in-flight buffers that no
        newer batch replaced. `keys`: every block the batch cut, including
        those whose final content a later batch of the same segment carries
        (they get no result of their own).

        Batches settle in the order of their BLOCK records in the journal,
        so applying each one whose key is still `unsettled` keeps memory
        equal to replay, also when a newer batch already cut the same block.
        A block truncated or deleted since the cut is skipped: its TRUNC or
        INODE_DEL is already in memory and follows this batch in the journal."""
        inline = inline or {}
        for key in keys:
            pending = self.unsettled.get(key)
            if pending is not None and batch_id in pending:
                pending.discard(batch_id)
                if not pending:
                    del self.unsettled[key]
                ref = results.get(key)
                if ref is not None:
                    self.state.apply(ref.record(key[0], key[1]))
                for off, data in inline.get(key, ()):
                    self.state.apply([PATCH, key[0], key[1], off, data])
            fl = self.inflight.get(key)
            if fl is not None and fl[0] == batch_id:
                del self.inflight[key]
        self.inflight_bytes -= nbytes
        async with self.space_freed:
            self.space_freed.notify_all()

    @property
    def has_dirty(self) -> bool:
        return bool(self.dirty)
