"""Cache accounting, pure (no I/O, no clock): which cached blocks to evict,
and how many dirty bytes may wait for upload.

Kept apart from the file handling in blockcache.py so the rules - LRU order,
pinned blocks never evicted, budgets never negative - are unit-tested in
milliseconds.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator


class CachePolicy:
    """LRU bookkeeping of cached blocks keyed by content hash.

    A pinned block (not yet uploaded, or in use) counts towards `used` but is
    never offered for eviction. Pins are counted, so two users pinning the
    same block both have to unpin it. The policy only suggests victims; the
    caller removes them (and the files) and decides what to do if not enough
    room can be made.
    """

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"cache capacity must be >= 0 bytes, not {capacity_bytes}")
        self.capacity = capacity_bytes
        self._lru: OrderedDict[bytes, int] = OrderedDict()   # hash -> size, least recently used first
        self._pins: dict[bytes, int] = {}                      # hash -> pin count (> 0)
        self._used = 0

    @property
    def used(self) -> int:
        """Bytes of every tracked block, pinned ones included."""
        return self._used

    def __contains__(self, h: bytes) -> bool:
        return h in self._lru

    def __len__(self) -> int:
        return len(self._lru)

    def __iter__(self) -> Iterator[bytes]:
        """Hashes, least recently used first."""
        return iter(list(self._lru))

    def size_of(self, h: bytes) -> int | None:
        return self._lru.get(h)

    def is_pinned(self, h: bytes) -> bool:
        return h in self._pins

    def add(self, h: bytes, size: int) -> None:
        """Track a block (or update its size) as the most recently used."""
        if size < 0:
            raise ValueError(f"block size must be >= 0, not {size}")
        old = self._lru.get(h)
        if old is not None:
            self._used -= old
        self._lru[h] = size
        self._lru.move_to_end(h)
        self._used += size

    def touch(self, h: bytes) -> None:
        """Mark a block as just used; unknown hashes are ignored."""
        if h in self._lru:
            self._lru.move_to_end(h)

    def remove(self, h: bytes) -> None:
        """Forget a block and any pins on it; unknown hashes are ignored."""
        size = self._lru.pop(h, None)
        if size is not None:
            self._used -= size
        self._pins.pop(h, None)

    def pin(self, h: bytes) -> None:
        """Protect a tracked block from eviction until a matching unpin."""
        if h not in self._lru:
            raise KeyError(f"cannot pin block {h.hex()}: it is not in the cache")
        self._pins[h] = self._pins.get(h, 0) + 1

    def unpin(self, h: bytes) -> None:
        """Undo one pin; unpinning an unpinned block is a no-op."""
        n = self._pins.get(h, 0) - 1
        if n > 0:
            self._pins[h] = n
        else:
            self._pins.pop(h, None)

    def oldest_unpinned(self, nbytes: int) -> list[bytes]:
        """Least recently used unpinned blocks totalling at least `nbytes`
        (all of them if there are not that many)."""
        out: list[bytes] = []
        need = nbytes
        for h, size in self._lru.items():
            if need <= 0:
                break
            if h in self._pins:
                continue
            out.append(h)
            need -= size
        return out

    def evict_candidates(self, incoming_bytes: int) -> list[bytes]:
        """Blocks to evict, LRU first, so `used + incoming_bytes <= capacity`.

        If pinned blocks make that impossible, returns every unpinned block:
        the caller checks `fits` afterwards and decides."""
        return self.oldest_unpinned(self._used + incoming_bytes - self.capacity)

    def fits(self, incoming_bytes: int) -> bool:
        return self._used + incoming_bytes <= self.capacity


class DirtyBudget:
    """Accounting of dirty (written, not yet uploaded) bytes against a limit.

    Writers ask `can_admit` before adding; the caller does the waiting. A
    single admission larger than the whole limit is allowed when nothing is
    dirty, so an oversized write proceeds alone instead of waiting forever.
    """

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"dirty limit must be > 0 bytes, not {limit_bytes}")
        self.limit = limit_bytes
        self._dirty = 0

    @property
    def dirty(self) -> int:
        return self._dirty

    def can_admit(self, n: int) -> bool:
        return self._dirty == 0 or self._dirty + n <= self.limit

    def add(self, n: int) -> None:
        """Account n more dirty bytes (whether or not can_admit said yes)."""
        if n < 0:
            raise ValueError(f"cannot add {n} dirty bytes")
        self._dirty += n

    def release(self, n: int) -> None:
        """n dirty bytes were uploaded or dropped."""
        if n < 0:
            raise ValueError(f"cannot release {n} dirty bytes")
        if n > self._dirty:
            raise ValueError(f"releasing {n} dirty bytes but only {self._dirty} are accounted: "
                             f"an accounting bug")
        self._dirty -= n
