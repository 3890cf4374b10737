"""Does the store honour conditional creates? Fencing depends on it (SPEC §4):
a store that silently ignores If-None-Match would let two owners both
"win" the same journal slot."""
from __future__ import annotations

import logging
import secrets

from fsd.store.base import (
    ObjectStore,
    PreconditionFailed,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

PROBE_PREFIX = "_probe/"
# These say nothing about conditional writes: the probe could not run.
_INCONCLUSIVE = (StoreUnavailable, StoreAuthError, StoreConfigError)


def probe_conditional_writes(store: ObjectStore) -> bool:
    """Create a random probe key twice with if_none_match. True iff the second
    create is refused with PreconditionFailed and the first write's content
    survived. A store that rejects the header outright (e.g. 501 Not
    Implemented) also answers False; an unreachable, misconfigured or
    refusing store raises, since nothing can be concluded. The probe key is
    always deleted (a failed delete is only logged)."""
    key = f"{PROBE_PREFIX}cond-{secrets.token_hex(8)}"
    try:
        return _probe(store, key)
    finally:
        try:
            store.delete(key)
        except StoreError as e:
            log.warning("could not delete probe object %s from %s: %s", key, store.url, e)


def _probe(store: ObjectStore, key: str) -> bool:
    first = b"first " + secrets.token_bytes(8).hex().encode()
    try:
        store.put(key, first, if_none_match=True)
    except _INCONCLUSIVE:
        raise
    except StoreError:
        return False            # refused the header, or "exists" for a fresh random key
    try:
        store.put(key, b"second", if_none_match=True)
    except PreconditionFailed:
        return store.get(key) == first
    except _INCONCLUSIVE:
        raise
    except StoreError:
        return False
    return False                # the second create was accepted: the header is ignored
