"""Object stores behind one narrow interface (see base.py): `file://`
directories and `s3://` buckets, opened from a store URL."""
from __future__ import annotations

from typing import Any

from fsd.store.base import (
    NotFound,
    ObjectStore,
    PreconditionFailed,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)
from fsd.store.sealing import KeyRing, KeyUnavailable, SealingStore, hash_spec
from fsd.store.url import StoreSpec, parse_store_url

__all__ = ["open_store", "open_raw_store", "ObjectStore", "StoreError", "NotFound", "PreconditionFailed",
           "StoreUnavailable", "StoreAuthError", "StoreConfigError", "StoreSpec", "parse_store_url", "KeyRing",
           "KeyUnavailable", "SealingStore", "hash_spec"]


def open_store(url: str, *, check: bool = True, create: bool = False, ring: KeyRing | None = None,
               **s3_options: Any) -> ObjectStore:
    """Open the store a URL names. For s3://, `s3_options` go to S3Store
    (attempts, base_delay, connect_timeout, ...) and, with `check`, the bucket
    is checked right away, so a wrong URL or refused credentials fail here
    with advice rather than at the first write. With `create`, a file://
    directory that does not exist is created (with a log line): for the
    commands that set a store up. Blocking: from trio, call it in a worker
    thread.

    The store is wrapped in a `SealingStore`: the objects of encrypted
    volumes are sealed and opened with the keys of `ring` (without one, an
    encrypted volume is refused with a message naming its key)."""
    return SealingStore(open_raw_store(url, check=check, create=create, **s3_options), ring)


def open_raw_store(url: str, *, check: bool = True, create: bool = False, **s3_options: Any) -> ObjectStore:
    """The store a URL names, as it is: no sealing (the store backends' own tests,
    and reading objects exactly as stored)."""
    spec = parse_store_url(url)
    if spec.scheme == "file":
        from fsd.store.filestore import FileStore
        return FileStore(spec.path, create=create)
    from fsd.store.s3store import S3Store
    store = S3Store(spec, **s3_options)
    if check:
        try:
            store.check()
        except BaseException:
            store.close()
            raise
    return store
