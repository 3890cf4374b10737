"""SQLite implementation of the state store (the embedded default: one control service).

One table `kv(key, value, revision)` and one store revision that grows by one
with every writing transaction (like etcd's), so a revision is never reused
even after a delete and re-create. WAL with synchronous=FULL: a committed
transaction survives power loss.

Why a lock file: the watch of this backend is fed by this process's own
writes (an in-memory history of recent changes), so a second control service
on the same file would change state this one never hears of. `flock` on the
database makes that impossible: the second service fails at start with a
message saying so. Several replicas need the etcd backend.

The SQLite calls block; they run in one worker thread at a time, never on
the trio loop.
"""
from __future__ import annotations

import collections
import fcntl
import os
import sqlite3
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import msgpack
import trio

from control.state import ANY, NEW, CasConflict, Compacted, Event, Op, Snapshot, StateError

HISTORY = 20_000          # changes kept in memory for watches that fall behind


class _Db:
    """The blocking part: one connection, every call under a lock."""

    def __init__(self, path: Path, read_only: bool = False):
        self.path = path
        self._lock = threading.Lock()
        self._lockfd: int | None = None
        if read_only:          # a reader beside the running service: no lock, no schema changes
            try:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                           isolation_level=None)
                self._db.execute("SELECT 1 FROM meta").fetchall()
            except sqlite3.Error as e:
                raise StateError(f"cannot read control state {path}: {e}") from None
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lockfd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise StateError(f"cannot open control state {path}: {e.strerror or e}") from None
        try:
            fcntl.flock(self._lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lockfd)
            raise StateError(f"control state {path} is in use by another control service on this machine "
                             "(one SQLite file serves one control service; several replicas need "
                             "--state etcd://...)") from None
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                             "revision INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 0)")
        except (sqlite3.Error, OSError) as e:
            os.close(self._lockfd)
            raise StateError(f"cannot open control state {path}: {e}") from None

    def get(self, key: str) -> tuple[Any, int] | None:
        with self._lock:
            row = self._db.execute("SELECT value, revision FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else (msgpack.unpackb(row[0], raw=False), row[1])

    def scan(self, prefix: str) -> Snapshot:
        hi = prefix + "\U0010ffff"
        with self._lock:
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute("SELECT key, value, revision FROM kv WHERE key >= ? AND key < ? "
                                        "ORDER BY key", (prefix, hi)).fetchall()
                rev = self._revision()
            finally:
                self._db.execute("COMMIT")
        return Snapshot([(k, msgpack.unpackb(v, raw=False), r) for k, v, r in rows], rev)

    def _revision(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0])

    def revision(self) -> int:
        with self._lock:
            return self._revision()

    def txn(self, ops: list[Op]) -> tuple[int, list[Event]]:
        encoded = [(op, None if op.delete or op.check else msgpack.packb(op.value, use_bin_type=True))
                   for op in ops]
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    rev = self._revision()
                    for op, _ in encoded:
                        row = db.execute("SELECT revision FROM kv WHERE key = ?", (op.key,)).fetchone()
                        actual = row[0] if row else NEW
                        if op.expected != ANY and actual != op.expected:
                            raise CasConflict(op.key, op.expected, actual, rev)
                    writes = [(op, blob) for op, blob in encoded if not op.check]
                    if not writes:
                        db.execute("COMMIT")
                        return rev, []
                    rev += 1
                    events = []
                    for op, blob in writes:
                        if op.delete:
                            if db.execute("DELETE FROM kv WHERE key = ?", (op.key,)).rowcount:
                                events.append(Event(op.key, None, rev))
                        else:
                            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (op.key, blob, rev))
                            events.append(Event(op.key, op.value, rev))
                    db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
                    db.execute("COMMIT")
                    return rev, events
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StateError(f"control state {self.path}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lockfd is not None:
                os.close(self._lockfd)


class SqliteState:
    """The async state store over one SQLite file (see the module docstring)."""

    kind = "sqlite"

    def __init__(self, path: str | Path, history: int = HISTORY, *, read_only: bool = False):
        self.path = Path(path)
        self._db = _Db(self.path, read_only)
        self._limiter = trio.CapacityLimiter(1)
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        # Every revision above this one is in _history (or was never written).
        self._oldest = self._db.revision()
        self._revision = self._oldest
        self._changed: trio.Event | None = None

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def get(self, key: str) -> tuple[Any, int] | None:
        return await self._run(self._db.get, key)

    async def scan(self, prefix: str) -> Snapshot:
        return await self._run(self._db.scan, prefix)

    async def revision(self) -> int:
        return await self._run(self._db.revision)

    async def txn(self, ops: list[Op]) -> int:
        rev, events = await self._run(self._db.txn, ops)
        if events:
            self._history.extend(events)
            if len(self._history) == self._history.maxlen:
                # The oldest revision left may have lost some of its keys: only later ones are whole.
                self._oldest = max(self._oldest, self._history[0].revision)
            self._revision = rev
            if self._changed is not None:
                self._changed.set()
                self._changed = None
        return rev

    async def compact(self, revision: int) -> None:
        """Nothing to do: the file keeps only current rows, the history is bounded."""

    async def watch(self, prefix: str, after: int) -> AsyncGenerator[list[Event], None]:
        while True:
            if after < self._oldest:
                raise Compacted(after, self._oldest)
            batch = []
            for e in reversed(self._history):       # watchers are usually caught up: scan from the end
                if e.revision <= after:
                    break
                if e.key.startswith(prefix):
                    batch.append(e)
            batch.reverse()
            if batch:
                yield batch
            after = max(after, self._revision)
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()

    async def aclose(self) -> None:
        await self._run(self._db.close)
