"""SQLite implementation of the state store (the embedded default).

One table `kv(key, value, revision)`; revisions come from one counter that
grows with every write (like etcd's store revision), so a revision is never
reused even after a delete and re-create. WAL with synchronous=FULL: a
committed transaction survives power loss. The calls block: the server runs
them in a worker thread (one at a time, guarded by a lock here too).
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgpack

from control.state import ANY, NEW, CasConflict, Op, StateError


class SqliteState:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                             "revision INTEGER NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('revision', 0)")
        except (sqlite3.Error, OSError) as e:
            raise StateError(f"cannot open control state {self.path}: {e}") from None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- reads
    def get(self, key: str) -> tuple[Any, int] | None:
        with self._lock:
            row = self._db.execute("SELECT value, revision FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else (msgpack.unpackb(row[0], raw=False), row[1])

    def list(self, prefix: str) -> list[tuple[str, Any, int]]:
        hi = prefix + "\U0010ffff"
        with self._lock:
            rows = self._db.execute("SELECT key, value, revision FROM kv WHERE key >= ? AND key < ? "
                                    "ORDER BY key", (prefix, hi)).fetchall()
        return [(k, msgpack.unpackb(v, raw=False), r) for k, v, r in rows]

    def revision(self) -> int:
        with self._lock:
            return self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]

    # --------------------------------------------------------------- writes
    def cas(self, key: str, expected: int | None, value: Any) -> int:
        return self.txn([Op(key, NEW if expected is None else expected, value)])[key]

    def delete(self, key: str, revision: int) -> None:
        self.txn([Op(key, revision, delete=True)])

    def txn(self, ops: list[Op]) -> dict[str, int]:
        encoded = [(op, None if op.delete else msgpack.packb(op.value, use_bin_type=True)) for op in ops]
        with self._lock:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    rev = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()[0]
                    out: dict[str, int] = {}
                    for op, blob in encoded:
                        row = db.execute("SELECT revision FROM kv WHERE key = ?", (op.key,)).fetchone()
                        actual = row[0] if row else NEW
                        if op.expected != ANY and actual != op.expected:
                            raise CasConflict(op.key, op.expected, actual)
                        if op.delete:
                            db.execute("DELETE FROM kv WHERE key = ?", (op.key,))
                            out[op.key] = 0
                        else:
                            rev += 1
                            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (op.key, blob, rev))
                            out[op.key] = rev
                    db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
                    db.execute("COMMIT")
                    return out
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise StateError(f"control state {self.path}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()
