"""The on-disk cache of blocks: one file per content hash holding the raw
(decoded) block, LRU-evicted to stay under a capacity.

Layout: `DIR/<h[:2]>/<hex>`, where DIR is the directory given to BlockCache
(the mount passes `CACHE/blocks`). Files are written to a temporary name and
renamed, so a reader never sees a partial block from a live writer.

Synchronous and thread-safe: the trio side calls it in worker threads. One
lock guards the index *and* the renames/unlinks that change which files
exist, so the index and the directory never disagree about a block (an
eviction can't delete a file a concurrent put just renamed into place).

Files are not fsynced: these are copies of data that is (or will be) in the
store, or of blocks the caller pins and keeps until uploaded. After a crash
or power loss a file may be torn, so every block found at start-up is
checked against its hash on its first read and dropped if it does not match.

A full disk is reported (CacheFull), never swallowed; a clean block that
cannot be cached is simply fetched again later.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import threading
from pathlib import Path

from fsd.datapath.cache.directio import CacheFileIO
from fsd.datapath.cache.policy import CachePolicy
from fsd.format.dataobj import HashSpec, block_hash

log = logging.getLogger("ferry.cache")

_TMP_PREFIX = ".tmp-"
_FAN_RE = re.compile(r"[0-9a-f]{2}")
_NAME_RE = re.compile(r"[0-9a-f]{64}")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# On a full disk, evict this many times the incoming block: room for the
# retry and a few more puts, instead of failing a write on every next put.
_ENOSPC_HEADROOM = 4


class CacheFull(OSError):
    """The cache directory's filesystem is full (ENOSPC/EDQUOT) even after
    evicting clean blocks; the message names the directory."""


class BlockCache:
    def __init__(self, directory: Path | str, capacity_bytes: int, content_hash: HashSpec,
                 direct_io: bool = True) -> None:
        self.dir = Path(directory)
        self.content_hash = content_hash     # the volume's: a block file is checked against its name
        self.dir.mkdir(parents=True, exist_ok=True)
        # Block files bypass the page cache where the filesystem allows it (fsd/datapath/cache/directio.py).
        self._io = CacheFileIO.for_directory(self.dir) if direct_io else CacheFileIO(False)
        self._policy = CachePolicy(capacity_bytes)
        self._lock = threading.Lock()
        self._verified: set[bytes] = set()   # written by, or checked by, this process
        self._reserved = 0                   # bytes of puts being written right now
        for h, size in self._scan():
            self._policy.add(h, size)
        with self._lock:
            self._evict_locked(self._policy.oldest_unpinned(self._policy.used - self._policy.capacity))

    # ------------------------------------------------------------ helpers
    def _scan(self) -> list[tuple[bytes, int]]:
        """Blocks already on disk, oldest mtime first; stale temporary files
        (a put interrupted by a crash) are removed."""
        found: list[tuple[int, bytes, int]] = []
        for sub in self.dir.iterdir():
            if sub.name.startswith(_TMP_PREFIX):
                sub.unlink(missing_ok=True)
                continue
            if not _FAN_RE.fullmatch(sub.name) or not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.startswith(_TMP_PREFIX):
                    f.unlink(missing_ok=True)
                elif _NAME_RE.fullmatch(f.name) and f.name[:2] == sub.name:
                    try:
                        st = f.stat()
                    except FileNotFoundError:
                        continue
                    found.append((st.st_mtime_ns, bytes.fromhex(f.name), st.st_size))
        found.sort()
        return [(h, size) for _, h, size in found]

    def _path(self, h: bytes) -> Path:
        x = h.hex()
        return self.dir / x[:2] / x

    def _evict_locked(self, victims: list[bytes]) -> None:
        for v in victims:
            self._policy.remove(v)
            self._verified.discard(v)
            self._path(v).unlink(missing_ok=True)

    def _forget_if_missing(self, h: bytes) -> None:
        """A tracked file vanished (removed behind our back): stop tracking it,
        unless a concurrent put has just put it back."""
        with self._lock:
            if h in self._policy and not self._path(h).exists():
                self._policy.remove(h)
                self._verified.discard(h)

    # -------------------------------------------------------------- reads
    def contains(self, h: bytes) -> bool:
        with self._lock:
            return h in self._policy

    def get(self, h: bytes) -> bytes | None:
        """The raw block, or None if it is not cached (or was found damaged)."""
        with self._lock:
            if h not in self._policy:
                return None
            self._policy.touch(h)
            verified = h in self._verified
        try:
            data = self._io.read(self._path(h))
        except FileNotFoundError:
            self._forget_if_missing(h)
            return None
        if not verified:
            if block_hash(data, self.content_hash) != h:
                self._drop_damaged(h, len(data))
                return None
            with self._lock:
                if h in self._policy:
                    self._verified.add(h)
        return data

    def get_range(self, h: bytes, start: int, end: int) -> bytes | None:
        """Bytes [start, end) of the raw block (shorter at its end), or None."""
        if not 0 <= start <= end:
            raise ValueError(f"bad range [{start}, {end})")
        with self._lock:
            if h not in self._policy:
                return None
            verified = h in self._verified
            if verified:
                self._policy.touch(h)
        if not verified:
            data = self.get(h)   # first read since start-up: check the whole block once
            return None if data is None else data[start:end]
        try:
            return self._io.read(self._path(h), start, end)
        except FileNotFoundError:
            self._forget_if_missing(h)
            return None

    def _drop_damaged(self, h: bytes, size: int) -> None:
        with self._lock:
            if h in self._verified:   # a put replaced it meanwhile
                return
            if h in self._policy:
                self._evict_locked([h])
        log.warning("block cache %s: cached block %s (%d bytes) does not match its hash "
                    "(torn by a crash?); dropped, it will be fetched again", self.dir, h.hex(), size)

    # ------------------------------------------------------------- writes
    def put(self, h: bytes, raw: bytes | bytearray | memoryview, pinned: bool = False) -> bool:
        """Cache `raw` (whose hash is `h`). Returns whether it is cached.

        A pinned block is never evicted until `unpin`, and is written even if
        pinned blocks already fill the capacity (the caller may have no other
        copy). An unpinned block that can't fit without evicting pinned ones
        is not cached (returns False). Raises CacheFull if the disk is full
        even after evicting clean blocks.
        """
        n = len(raw)
        with self._lock:
            if h in self._policy and h in self._verified:
                self._policy.touch(h)
                if pinned:
                    self._policy.pin(h)
                return True
            # (A present but unverified file may be torn: rewrite it from `raw`.)
            victims = self._policy.evict_candidates(self._reserved + n)
            freed = sum(self._policy.size_of(v) or 0 for v in victims)
            if not pinned and not self._policy.fits(self._reserved + n - freed):
                return False
            self._evict_locked(victims)
            self._reserved += n
        try:
            for attempt in (0, 1):
                try:
                    tmp = self._write_tmp(h, raw)
                    break
                except OSError as e:
                    if e.errno not in _FULL_ERRNOS:
                        raise
                    with self._lock:
                        victims = self._policy.oldest_unpinned(_ENOSPC_HEADROOM * max(n, 1))
                        self._evict_locked(victims)
                    if attempt or not victims:
                        raise CacheFull(e.errno, f"block cache directory {self.dir} is full "
                                                 f"({e.strerror}) even after evicting clean blocks") from None
            with self._lock:
                try:
                    os.replace(tmp, self._path(h))
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                self._policy.add(h, n)
                self._verified.add(h)
                if pinned:
                    self._policy.pin(h)
            return True
        finally:
            with self._lock:
                self._reserved -= n

    def _write_tmp(self, h: bytes, raw: bytes | bytearray | memoryview) -> Path:
        """Write raw to a fresh temporary file next to the block's final path."""
        final = self._path(h)
        tmp = final.parent / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            try:
                self._io.write_new(tmp, raw)
            except FileNotFoundError:
                final.parent.mkdir(parents=True, exist_ok=True)
                self._io.write_new(tmp, raw)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def unpin(self, h: bytes) -> None:
        """Undo one `put(..., pinned=True)`: the block becomes evictable."""
        with self._lock:
            self._policy.unpin(h)

    def discard(self, h: bytes) -> None:
        """Remove a block now, pinned or not (unknown hashes are ignored)."""
        with self._lock:
            self._evict_locked([h])

    # -------------------------------------------------------------- stats
    @property
    def used(self) -> int:
        with self._lock:
            return self._policy.used

    @property
    def capacity(self) -> int:
        return self._policy.capacity

    def __len__(self) -> int:
        with self._lock:
            return len(self._policy)
