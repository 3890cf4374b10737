"""The on-disk cache of clean blocks: one file per content hash, LRU-evicted
to stay under its capacity. Synchronous and thread-safe: callers on the trio
loop run it in worker threads. A full disk is reported (CacheFull), never
swallowed; a block that cannot be cached is simply re-fetched later."""
from __future__ import annotations

import errno
import os
import secrets
import threading
from pathlib import Path

from fsd.cache.policy import CachePolicy


class CacheFull(OSError):
    pass


class BlockCache:
    def __init__(self, directory: Path, capacity: int) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.policy = CachePolicy(capacity)
        self.lock = threading.Lock()
        found = []
        for sub in self.dir.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if f.name.startswith(".tmp"):
                    f.unlink(missing_ok=True)
                    continue
                try:
                    st = f.stat()
                    found.append((st.st_mtime_ns, bytes.fromhex(f.name), st.st_size))
                except (ValueError, OSError):
                    continue
        for _, h, size in sorted(found):
            self.policy.add(h, size)

    def _path(self, h: bytes) -> Path:
        x = h.hex()
        return self.dir / x[:2] / x

    def contains(self, h: bytes) -> bool:
        with self.lock:
            return h in self.policy

    def get(self, h: bytes) -> bytes | None:
        with self.lock:
            if h not in self.policy:
                return None
            self.policy.touch(h)
        try:
            return self._path(h).read_bytes()
        except FileNotFoundError:
            with self.lock:
                self.policy.remove(h)
            return None

    def get_range(self, h: bytes, start: int, end: int) -> bytes | None:
        with self.lock:
            if h not in self.policy:
                return None
            self.policy.touch(h)
        try:
            with open(self._path(h), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            with self.lock:
                self.policy.remove(h)
            return None

    def _evict(self, incoming: int) -> None:
        with self.lock:
            victims = self.policy.evict_candidates(incoming)
            for v in victims:
                self.policy.remove(v)
        for v in victims:
            self._path(v).unlink(missing_ok=True)

    def put(self, h: bytes, raw: bytes, pinned: bool = False) -> None:
        with self.lock:
            if h in self.policy:
                self.policy.touch(h)
                return
        self._evict(len(raw))
        path = self._path(h)
        for attempt in (0, 1):
            try:
                path.parent.mkdir(exist_ok=True)
                tmp = path.parent / f".tmp-{secrets.token_hex(6)}"
                try:
                    with open(tmp, "wb") as f:
                        f.write(raw)
                    os.replace(tmp, path)
                finally:
                    tmp.unlink(missing_ok=True)
                break
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if attempt:
                    raise CacheFull(e.errno, f"cache directory {self.dir} is full: {e.strerror}") from None
                # Make room by dropping half of what is cached, then retry once.
                with self.lock:
                    self.policy.capacity = max(self.policy.used // 2, 0)
                self._evict(len(raw))
        with self.lock:
            self.policy.add(h, len(raw))
            if pinned:
                self.policy.pin(h)

    def unpin(self, h: bytes) -> None:
        with self.lock:
            self.policy.unpin(h)

    def discard(self, h: bytes) -> None:
        with self.lock:
            self.policy.remove(h)
        self._path(h).unlink(missing_ok=True)
