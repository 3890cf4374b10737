"""Object stores behind one narrow interface (see base.py)."""
from __future__ import annotations

from fsd.store.base import (NotFound, ObjectStore, PreconditionFailed, StoreAuthError, StoreConfigError,
                            StoreError, StoreUnavailable)
from fsd.store.url import StoreSpec, parse_store_url

__all__ = ["open_store", "ObjectStore", "StoreError", "NotFound", "PreconditionFailed", "StoreUnavailable",
           "StoreAuthError", "StoreConfigError", "StoreSpec", "parse_store_url"]


def open_store(url: str) -> ObjectStore:
    spec = parse_store_url(url)
    if spec.scheme == "file":
        from fsd.store.filestore import FileStore
        return FileStore(spec.path)
    from fsd.store.s3store import S3Store
    store = S3Store(spec)
    store.check()
    return store
