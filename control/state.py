"""The control service's state store interface: keys, values, revisions, CAS.

Why an interface: SQLite is the embedded default, etcd (v3 API) comes later
for several control replicas. Both offer the same primitive - a key whose
every change bumps a revision, and transactions that apply only when the
revisions they expected are still current - so the server is written
against that primitive alone. Implementations are blocking (the server calls
them through `trio.to_thread`), values are msgpack-encodable objects.

Keys used by the server: `volumes/<name>`, `hosts/<id>`, `leases/<volume>`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

# `expected` in an Op: a revision number, NEW (the key must not exist) or ANY (no check).
NEW: int = 0
ANY: int = -1


class CasConflict(Exception):
    """A compare-and-swap found another revision than expected; nothing was written."""

    def __init__(self, key: str, expected: int, actual: int):
        super().__init__(f"state key {key!r}: expected revision {expected}, found {actual}")
        self.key = key
        self.expected = expected
        self.actual = actual


class StateError(Exception):
    """The state store failed (disk, database): the request changed nothing."""


@dataclass(frozen=True)
class Op:
    """One write of a transaction: put `value` (or delete when `delete`) at `key`
    if the key's revision is `expected` (NEW: absent, ANY: don't check)."""

    key: str
    expected: int
    value: Any = None
    delete: bool = False


class StateStore(Protocol):
    def get(self, key: str) -> tuple[Any, int] | None:
        """(value, revision), or None when the key does not exist."""

    def cas(self, key: str, expected: int | None, value: Any) -> int:
        """Put `value` if the key is at revision `expected` (None: must not exist).
        Returns the new revision; CasConflict otherwise."""

    def delete(self, key: str, revision: int) -> None:
        """Delete the key if it is at `revision`; CasConflict otherwise."""

    def list(self, prefix: str) -> list[tuple[str, Any, int]]:
        """Every (key, value, revision) whose key starts with `prefix`, sorted by key."""

    def txn(self, ops: list[Op]) -> dict[str, int]:
        """Apply every op or none (CasConflict names the first failed check).
        Returns key -> new revision (0 for deleted keys)."""

    def close(self) -> None:
        ...


def open_state(url: str) -> StateStore:
    """`sqlite:PATH` -> SqliteState. ValueError explains any other URL."""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("--state sqlite:PATH needs a path, e.g. sqlite:/var/lib/ferry/control.db")
        from control.sqlite_state import SqliteState
        return SqliteState(path)
    if url.startswith("etcd://"):
        raise ValueError("the etcd state backend is not implemented yet; use --state sqlite:PATH")
    raise ValueError(f"unknown state URL {url!r}: use sqlite:PATH (e.g. sqlite:/var/lib/ferry/control.db)")
