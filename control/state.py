"""The control service's state store interface: keys, values, revisions, CAS, watch.

Why an interface: SQLite is the embedded default (one control service),
etcd (v3 API) is the shared store under several control replicas. Both
offer the same primitive - a key whose every change is stamped with the
store's revision, transactions that apply only when the revisions they
expected are still current, and a watch that replays every change after a
revision in order - so the server is written against that primitive alone,
and one contract test suite (tests/control/test_state_contract.py) holds
both backends to it.

The contract, exactly as etcd defines it:

* The store has one revision counter. A transaction that writes bumps it by
  one, and every key it puts carries that revision (`mod_revision`). A
  revision is never reused, not even after a delete and re-create.
* `Op.expected` compares the key's current revision: a number, `NEW` (the
  key must not exist, i.e. revision 0), or `ANY` (no check). A `check` op
  compares without writing (the server uses it to make a decision depend on
  a key it only read, e.g. a host's liveness record).
* `watch(prefix, after)` yields, in revision order, every change with a
  revision above `after`. If that history is gone (etcd compacted it, or the
  SQLite backend's in-memory history no longer reaches back) it raises
  `Compacted`: the caller reloads with `scan` and watches again from there.
  An empty batch says the watch is interrupted (the store is unreachable)
  and retrying: no change is lost, but time is passing without news.

Values are msgpack-encodable objects. Every call is async and never blocks
the trio loop (SQLite runs in a worker thread; etcd is HTTP).
"""
from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

# `expected` in an Op: a revision number, NEW (the key must not exist) or ANY (no check).
NEW: int = 0
ANY: int = -1


class StateError(Exception):
    """The state store failed or cannot be reached: the request changed nothing
    that the caller can count on (a write whose answer was lost may still have
    happened; the watch tells)."""


class CasConflict(StateError):
    """A compare-and-swap found another revision than expected; nothing was written."""

    def __init__(self, key: str, expected: int, actual: int | None = None, revision: int = 0):
        found = "another revision" if actual is None else f"revision {actual}"
        super().__init__(f"state key {key!r}: expected revision {expected}, found {found}")
        self.key = key
        self.expected = expected
        self.actual = actual
        #: The store revision the transaction was checked at: a replica that
        #: has seen this revision has seen what made the check fail.
        self.revision = revision


class Compacted(StateError):
    """A watch asked for history the store no longer has: reload, then watch again."""

    def __init__(self, after: int, oldest: int):
        super().__init__(f"state history after revision {after} is gone (oldest kept: {oldest}); reload")
        self.after = after
        self.oldest = oldest


@dataclass(frozen=True)
class Op:
    """One step of a transaction: put `value` (or delete when `delete`, or only
    compare when `check`) at `key` if the key's revision is `expected`."""

    key: str
    expected: int
    value: Any = None
    delete: bool = False
    check: bool = False


@dataclass(frozen=True)
class Event:
    """One change seen by a watch: `value` None means the key was deleted."""

    key: str
    value: Any
    revision: int

    @property
    def deleted(self) -> bool:
        return self.value is None


@dataclass(frozen=True)
class Snapshot:
    """`scan` result: the rows and the store revision they were read at."""

    rows: list[tuple[str, Any, int]]
    revision: int


class StateStore(Protocol):
    #: "sqlite" or "etcd", for logs and status.
    kind: str

    async def get(self, key: str) -> tuple[Any, int] | None:
        """(value, revision), or None when the key does not exist."""

    async def scan(self, prefix: str) -> Snapshot:
        """Every (key, value, revision) under `prefix`, sorted by key, and the store revision."""

    async def txn(self, ops: list[Op]) -> int:
        """Apply every op or none (CasConflict names a failed check). Returns the
        store revision after it (the revision of every key it put)."""

    async def revision(self) -> int:
        """The store's current revision (a linearizable read)."""

    async def compact(self, revision: int) -> None:
        """Forget history up to `revision` (etcd keeps every version until told)."""

    def watch(self, prefix: str, after: int) -> AsyncGenerator[list[Event], None]:
        """Batches of changes under `prefix` with revision > `after`, in order, forever."""

    async def aclose(self) -> None:
        ...
