"""trio face of an ObjectStore. Stores are synchronous (boto3, file I/O), so
every call runs in a worker thread, under a CapacityLimiter that bounds how
many run at once (and so the S3 connection pool and open files in use). No
blocking call ever runs on the trio loop.

Calls are not abandoned on cancellation: a PUT that was started completes
(or fails) before the cancelled task unwinds, so nobody is left guessing
whether it happened."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from fsd.store.base import ObjectStore

T = TypeVar("T")


class AsyncStore:
    def __init__(self, store: ObjectStore, limit: int = 16) -> None:
        self.store = store
        self.url = store.url
        self.limiter = trio.CapacityLimiter(limit)

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        await trio.to_thread.run_sync(lambda: self.store.put(key, data, if_none_match=if_none_match),
                                      limiter=self.limiter)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return await trio.to_thread.run_sync(self.store.get, key, start, end, limiter=self.limiter)

    async def call(self, fn: Callable[[ObjectStore], T]) -> T:
        """`fn(store)` in one worker thread under the store's limiter: for
        work that belongs with a request (decoding and caching a fetched
        block, caching an uploaded one), one thread hop instead of several.
        `fn` must be thread-safe and must not touch trio state."""
        return await trio.to_thread.run_sync(fn, self.store, limiter=self.limiter)

    async def list(self, prefix: str, start_after: str = "") -> list[str]:
        """All matching keys at once: the lazy iterator of the sync store would
        otherwise do blocking page fetches on the loop."""
        return await trio.to_thread.run_sync(lambda: list(self.store.list(prefix, start_after)),
                                             limiter=self.limiter)

    async def delete(self, key: str) -> None:
        await trio.to_thread.run_sync(self.store.delete, key, limiter=self.limiter)

    async def head(self, key: str) -> int | None:
        return await trio.to_thread.run_sync(self.store.head, key, limiter=self.limiter)
