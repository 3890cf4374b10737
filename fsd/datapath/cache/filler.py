"""Filling the block cache off the data path, best effort.

A block fetched from the store, or just uploaded, is worth keeping on local
disk, but writing it there (a file created per block, its data written) is
not what the reader or the writer is waiting for. On the 2-core benchmark VM
it was a fifth of the daemon's CPU on a sequential write and held a cold
sequential read at 155 MiB/s, against 195 without it (docs/performance.md).

So the copy is handed to one background thread with a bounded queue, at a
lower CPU priority than the rest of the daemon. When spare CPU and disk
keep up, every block is cached as before. When they do not (a stream at
full speed on a busy host), blocks that find the queue full are not cached
at all: the cache holds copies only, a dropped one costs a later GET at
most. JuiceFS's disk cache makes the same trade. `close` writes what is
queued before the daemon exits, so a clean unmount loses nothing queued.

Thread-safe; `offer` never blocks.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque

from fsd.datapath.cache.blockcache import BlockCache

log = logging.getLogger("ferry.cache")

# How much lower the filler thread's priority is than the daemon's (nice
# steps). Not SCHED_IDLE, though it measured a little faster: a thread that
# can be starved while it holds the GIL (or the cache's lock) would stall
# the whole daemon for as long as the host stays busy. At +10 it still gets
# about a tenth of a contended CPU, so such a wait stays short.
_NICE_STEP = 10


class CacheFiller:
    def __init__(self, cache: BlockCache, volume: str, queue_bytes: int = 16 << 20) -> None:
        self.cache = cache
        self.volume = volume                      # for log lines
        self.queue_bytes = queue_bytes
        self._queue: deque[tuple[bytes, bytes]] = deque()
        self._queued = 0                          # bytes in _queue
        self._pending: set[bytes] = set()         # hashes queued or being written
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self.written = 0
        self.dropped = 0
        self._last_error: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"cache filler {volume}", daemon=True)
        self._thread.start()

    def offer(self, h: bytes, raw: bytes) -> bool:
        """Queue a copy of block `h`; False (not cached) if the queue is full."""
        n = len(raw)
        with self._cond:
            if self._closing:
                return False
            if h in self._pending or self.cache.contains(h):
                return True
            if self._queue and self._queued + n > self.queue_bytes:
                self.dropped += 1
                return False
            self._queue.append((h, raw))
            self._queued += n
            self._pending.add(h)
            self._cond.notify()
        return True

    def pending(self, h: bytes) -> bool:
        """Queued and not yet on disk."""
        with self._cond:
            return h in self._pending

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written (tests, unmount)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + _NICE_STEP))
        except (OSError, AttributeError):
            pass      # a lower priority is a nicety
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    self._cond.notify_all()
                    return
                h, raw = self._queue.popleft()
                self._queued -= len(raw)
                self._busy = True
            try:
                self.cache.put(h, raw)
                self.written += 1
            except Exception as e:  # noqa: BLE001 - a failed copy must never stop the filler
                msg = f"{type(e).__name__}: {e}"
                if msg != self._last_error:
                    log.warning("volume %s: block cache put failed, going on without it: %s", self.volume, msg)
                    self._last_error = msg
            finally:
                with self._cond:
                    self._pending.discard(h)
                    self._busy = False
                    self._cond.notify_all()
