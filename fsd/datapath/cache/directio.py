"""Block cache file I/O that bypasses the page cache (O_DIRECT) where the
cache directory's filesystem allows it.

Why: a cached block is a copy of data the kernel usually holds already, in
the FUSE mount's page cache. Writing it through the page cache once more
costs a page allocation, a charge and a copy per 4 KiB, and keeps the same
bytes in memory twice. Measured on the 2-core benchmark VM: writing 256 new
1 MiB files cost 1.1 CPU-s buffered and 0.15 CPU-s with O_DIRECT. On a cold
sequential read through ferry that difference was a third of the daemon's
CPU (docs/performance.md).

O_DIRECT wants the buffer, the file offset and the length aligned to the
device's logical block size. Data is copied into a page-aligned (mmap)
buffer taken from a small pool, a write is padded to `ALIGN` and the file is
then truncated to its true length; a read covers the aligned range around
the bytes asked for. Where O_DIRECT is refused (EINVAL at open: a
filesystem without it), the same calls use ordinary buffered I/O.

Thread-safe: callers are the cache's worker threads.
"""
from __future__ import annotations

import errno
import mmap
import os
import threading
from pathlib import Path

ALIGN = 4096          # a multiple of every logical block size in use (512, 4096)
_POOL_KEEP = 4        # idle buffers kept for reuse (the cache runs under a 4-thread limiter)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_DIRECT = getattr(os, "O_DIRECT", 0)


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _BufferPool:
    """Page-aligned buffers, reused: an mmap per use would fault in fresh
    pages every time, which is the cost O_DIRECT is here to avoid."""

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return mmap.mmap(-1, max(_round_up(size), ALIGN))

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < _POOL_KEEP:
                self._free.append(buf)
                return
        buf.close()


class CacheFileIO:
    """Whole-file writes and ranged reads of cache files, direct when possible."""

    def __init__(self, direct: bool) -> None:
        self.direct = direct and bool(_DIRECT)
        self._pool = _BufferPool()

    @classmethod
    def for_directory(cls, directory: Path) -> CacheFileIO:
        """Direct I/O if the filesystem of `directory` takes an aligned
        O_DIRECT write and read, buffered otherwise."""
        if not _DIRECT:
            return cls(False)
        probe = directory / f".tmp-direct-probe-{os.getpid()}-{threading.get_ident()}"
        io = cls(True)
        try:
            io.write_new(probe, b"\0" * 100)
            ok = io.read(probe, 0, 100) == b"\0" * 100
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            ok = False
        finally:
            probe.unlink(missing_ok=True)
        return io if ok else cls(False)

    def write_new(self, path: Path, data: bytes | bytearray | memoryview) -> None:
        """Create `path` (it must not exist) holding exactly `data`. The file
        is not fsynced: cache files are copies, checked by hash after a crash."""
        src = memoryview(data).cast("B")
        n = len(src)
        fd = os.open(path, _CREATE | (_DIRECT if self.direct else 0), 0o600)
        try:
            if not self.direct:
                while src:
                    src = src[os.write(fd, src):]
                return
            padded = _round_up(n)
            buf = self._pool.take(padded)
            try:
                out = memoryview(buf)
                try:
                    out[:n] = src
                    out[n:padded] = bytes(padded - n)
                    pos = 0
                    while pos < padded:
                        pos += os.pwrite(fd, out[pos:padded], pos)
                finally:
                    out.release()
            finally:
                self._pool.give(buf)
            if padded != n:
                os.ftruncate(fd, n)
        finally:
            os.close(fd)

    def read(self, path: Path, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of `path` (to its end if `end` is None; shorter
        if the file is). FileNotFoundError if it does not exist."""
        fd = os.open(path, _READ | (_DIRECT if self.direct else 0))
        try:
            if end is None:
                end = os.fstat(fd).st_size
            if end <= start:
                return b""
            if not self.direct:
                return os.pread(fd, end - start, start)
            first = start - start % ALIGN
            span = _round_up(end) - first
            buf = self._pool.take(span)
            try:
                view = memoryview(buf)
                try:
                    got = 0
                    while got < span:
                        k = os.preadv(fd, [view[got:span]], first + got)
                        if k == 0:
                            break
                        got += k
                    lo = start - first
                    return bytes(view[lo:max(lo, min(got, end - first))])
                finally:
                    view.release()
            finally:
                self._pool.give(buf)
        finally:
            os.close(fd)
