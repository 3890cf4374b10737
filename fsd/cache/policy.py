"""Cache policy, pure: LRU over clean blocks, with pinned blocks never evicted."""
from __future__ import annotations

from collections import OrderedDict


class CachePolicy:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[bytes, int] = OrderedDict()   # hash -> size, oldest first
        self._pinned: dict[bytes, int] = {}
        self.used = 0

    def __contains__(self, h: bytes) -> bool:
        return h in self._lru

    def add(self, h: bytes, size: int) -> None:
        if h in self._lru:
            self.used -= self._lru[h]
        self._lru[h] = size
        self._lru.move_to_end(h)
        self.used += size

    def touch(self, h: bytes) -> None:
        if h in self._lru:
            self._lru.move_to_end(h)

    def remove(self, h: bytes) -> None:
        size = self._lru.pop(h, None)
        if size is not None:
            self.used -= size
        self._pinned.pop(h, None)

    def pin(self, h: bytes) -> None:
        self._pinned[h] = self._pinned.get(h, 0) + 1

    def unpin(self, h: bytes) -> None:
        n = self._pinned.get(h, 0) - 1
        if n > 0:
            self._pinned[h] = n
        else:
            self._pinned.pop(h, None)

    def evict_candidates(self, incoming: int) -> list[bytes]:
        """Oldest unpinned blocks whose removal makes room for `incoming` bytes."""
        need = self.used + incoming - self.capacity
        out: list[bytes] = []
        for h, size in self._lru.items():
            if need <= 0:
                break
            if h in self._pinned:
                continue
            out.append(h)
            need -= size
        return out
