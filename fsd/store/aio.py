"""trio face of an ObjectStore: every call runs in a worker thread under a
capacity limit, so no blocking call ever runs on the trio loop."""
from __future__ import annotations

import trio

from fsd.store.base import ObjectStore


class AsyncStore:
    def __init__(self, store: ObjectStore, limit: int = 16) -> None:
        self.store = store
        self.limiter = trio.CapacityLimiter(limit)

    async def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        await trio.to_thread.run_sync(lambda: self.store.put(key, data, if_none_match=if_none_match),
                                      limiter=self.limiter)

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return await trio.to_thread.run_sync(self.store.get, key, start, end, limiter=self.limiter)

    async def list(self, prefix: str, start_after: str = "") -> list[str]:
        return await trio.to_thread.run_sync(lambda: list(self.store.list(prefix, start_after)),
                                             limiter=self.limiter)

    async def delete(self, key: str) -> None:
        await trio.to_thread.run_sync(self.store.delete, key, limiter=self.limiter)

    async def head(self, key: str) -> int | None:
        return await trio.to_thread.run_sync(self.store.head, key, limiter=self.limiter)
