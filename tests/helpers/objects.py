"""Counting a volume's objects in the store, for tests that check what a
mount, GC or a snapshot left there (read with a store of their own, never
through the mount under test)."""
from __future__ import annotations

from collections.abc import Callable

from fsd.store import open_store
from fsd.volume import objects as vol_mod


def count_objects(store_url: str, volume: str, prefix: Callable[[str], str]) -> int:
    """Keys under `prefix(root)` of `volume`'s current root, e.g.
    `count_objects(url, "vol", keys.snapshots_prefix)`."""
    store = open_store(store_url)
    try:
        root = vol_mod.locate(store, volume)[0].root
        return sum(1 for _ in store.list(prefix(root)))
    finally:
        store.close()
