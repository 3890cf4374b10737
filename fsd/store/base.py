"""The narrow object-store interface every part of ferry talks to.

Implementations are synchronous and thread-safe; async code reaches them only
through `fsd.store.aio.AsyncStore`, which runs each call in a worker thread
under a capacity limit (no blocking call on the trio loop).
"""
from __future__ import annotations

import builtins
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its key, size and last-modified time (the store's
    clock, ns since the epoch; GC's grace period is measured with it)."""

    key: str
    size: int
    mtime_ns: int


class StoreError(Exception):
    """Base class: something went wrong talking to the object store.

    The message is written for a user: it says what failed and what to do."""


class NotFound(StoreError):
    """The key does not exist."""


class PreconditionFailed(StoreError):
    """A conditional create (If-None-Match: *) found the key already there.

    S3's 409 ConditionalRequestConflict (another write to the key was in
    flight) is reported as this too: the caller re-lists and retries."""


class StoreUnavailable(StoreError):
    """The store could not be reached or kept failing after retries (transient:
    the same call may succeed later, so long-running callers retry it)."""


class StoreAuthError(StoreError):
    """Credentials were refused."""


class StoreConfigError(StoreError):
    """The store URL points nowhere usable (missing bucket, bad directory, bad URL)."""


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        """Store `data` at `key`. With if_none_match, atomically create only if
        absent, else raise PreconditionFailed. Readers never see partial data."""

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Whole object, or bytes [start, end) of it. Raises NotFound."""

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Keys beginning with prefix, in lexical order, after start_after."""

    def list_info(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        """Like `list`, with each object's size and last-modified time."""

    def delete(self, key: str) -> None:
        """Remove key; deleting a missing key is not an error."""

    def delete_many(self, keys: builtins.list[str]) -> None:  # `list` is the method here
        """Remove every key (missing ones are no error), in as few requests as
        the store allows: GC and removal delete one key per committed segment,
        and one request per key would double the store's request load."""

    def head(self, key: str) -> int | None:
        """Size of the object, or None if it does not exist."""

    def close(self) -> None:
        """Release connections and threads."""
