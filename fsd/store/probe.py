"""Does the store honour conditional creates? Fencing depends on it (SPEC §4)."""
from __future__ import annotations

import secrets

from fsd.store.base import ObjectStore, PreconditionFailed


def probe_conditional_writes(store: ObjectStore) -> bool:
    key = f"_probe/cond-{secrets.token_hex(8)}"
    try:
        store.put(key, b"first", if_none_match=True)
        try:
            store.put(key, b"second", if_none_match=True)
        except PreconditionFailed:
            return store.get(key) == b"first"
        return False
    finally:
        store.delete(key)
