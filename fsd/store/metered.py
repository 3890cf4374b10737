"""An ObjectStore that times every request and counts its errors by kind.

Wrapped around the store a mount opens (fsd.lifecycle.mount), so the data
path, GC and snapshots are all counted without knowing it. Requests run in
worker threads, hence the lock. A request is one call of the interface
(an S3 store's own retries happen inside it). NotFound and
PreconditionFailed are answers, not errors: they are timed, not counted
as errors.
"""
from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fsd.stats import Histogram
from fsd.store.base import NotFound, ObjectInfo, ObjectStore, PreconditionFailed

T = TypeVar("T")
OPS = ("get", "put", "head", "list", "delete")


class MeteredStore:
    def __init__(self, store: ObjectStore, clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = store
        self.url = store.url
        self._clock = clock
        self._lock = threading.Lock()
        self._latency = {op: Histogram() for op in OPS}
        self._errors: dict[tuple[str, str], int] = {}

    def __getattr__(self, name: str) -> Any:      # the rest of a store's surface (check, probes, ...)
        return getattr(self.inner, name)

    def _record(self, op: str, started: float, error: BaseException | None) -> None:
        took = self._clock() - started
        with self._lock:
            self._latency[op].observe(took)
            if error is not None and not isinstance(error, (NotFound, PreconditionFailed)):
                k = (op, type(error).__name__)
                self._errors[k] = self._errors.get(k, 0) + 1

    def _timed(self, op: str, fn: Callable[[], T]) -> T:
        started = self._clock()
        try:
            out = fn()
        except BaseException as e:
            self._record(op, started, e)
            raise
        self._record(op, started, None)
        return out

    def _timed_iter(self, op: str, it: Iterator[T]) -> Iterator[T]:
        """A listing is lazy (page by page): timed from the call to its end."""
        started = self._clock()
        try:
            yield from it
        except GeneratorExit:       # the caller stopped early: not a store error
            self._record(op, started, None)
            raise
        except BaseException as e:
            self._record(op, started, e)
            raise
        self._record(op, started, None)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        self._timed("put", lambda: self.inner.put(key, data, if_none_match=if_none_match))

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return self._timed("get", lambda: self.inner.get(key, start, end))

    def head(self, key: str) -> int | None:
        return self._timed("head", lambda: self.inner.head(key))

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        return self._timed_iter("list", self.inner.list(prefix, start_after))

    def list_info(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        return self._timed_iter("list", self.inner.list_info(prefix, start_after))

    def delete(self, key: str) -> None:
        self._timed("delete", lambda: self.inner.delete(key))

    def delete_many(self, keys: builtins.list[str]) -> None:
        self._timed("delete", lambda: self.inner.delete_many(keys))

    def close(self) -> None:
        self.inner.close()

    def snapshot(self) -> dict[str, Any]:
        """{"latency": {op: histogram dict}, "errors": [[op, kind, count], ...]} for the status file."""
        with self._lock:
            return {"latency": {op: h.to_dict() for op, h in self._latency.items()},
                    "errors": [[op, kind, n] for (op, kind), n in sorted(self._errors.items())]}
