"""The local SQLite working copy of a volume's metadata (WAL mode).

It is changed only by applying committed journal segments, in order, so it
always equals the replay of the journal up to its recorded position (epoch,
seq). A remount of the same cache directory starts from it and replays only
the segments after that position, instead of downloading a snapshot and
every later segment. If it is missing, damaged or behind the latest
snapshot, the remote path is used: it is an accelerator, never the truth.

Synchronous: callers on the trio loop run it in one worker thread at a time
(a CapacityLimiter of 1), which also keeps segment order.
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import msgpack

from fsd.meta.records import BLOCK, DENT, DENT_DEL, HOLE, INODE, INODE_DEL, PATCH, TRUNC, XATTR, XATTR_DEL
from fsd.meta.state import MetaState

log = logging.getLogger("ferry.localdb")

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BLOB);
CREATE TABLE IF NOT EXISTS inode (ino INTEGER PRIMARY KEY, rec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS dent (parent INTEGER, name BLOB, ino INTEGER, cookie INTEGER,
                                 PRIMARY KEY (parent, name));
CREATE TABLE IF NOT EXISTS block (ino INTEGER, idx INTEGER, hash BLOB, length INTEGER, epoch INTEGER,
                                  src INTEGER NOT NULL DEFAULT 0,
                                  PRIMARY KEY (ino, idx));
CREATE TABLE IF NOT EXISTS xattr (ino INTEGER, name BLOB, value BLOB, PRIMARY KEY (ino, name));
CREATE TABLE IF NOT EXISTS patch (n INTEGER PRIMARY KEY AUTOINCREMENT, ino INTEGER, idx INTEGER,
                                  off INTEGER, data BLOB);
CREATE INDEX IF NOT EXISTS patch_block ON patch (ino, idx);
"""


class WorkingCopy:
    def __init__(self, path: Path, block_size: int) -> None:
        self.path = path
        self.bs = block_size
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if self.db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            # An older layout (blocks without their data epoch or origin): start
            # over; position() is then None and the mount loads from the store.
            for (table,) in self.db.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                            "AND name NOT LIKE 'sqlite_%'").fetchall():
                self.db.execute(f"DROP TABLE {table}")
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.db.executescript(SCHEMA)

    # ------------------------------------------------------------ identity
    def _get(self, k: str):
        row = self.db.execute("SELECT v FROM kv WHERE k=?", (k,)).fetchone()
        return None if row is None else msgpack.unpackb(row[0], raw=False)

    def position(self, uuid: str) -> tuple[int, int] | None:
        """(epoch, seq) this copy reflects, if it belongs to volume `uuid`."""
        try:
            if self._get("uuid") != uuid:
                return None
            pos = self._get("position")
            return None if pos is None else (pos[0], pos[1])
        except (sqlite3.DatabaseError, ValueError, msgpack.UnpackException) as e:
            log.warning("local working copy %s unreadable (%s); ignoring it", self.path, e)
            return None

    def reset(self, uuid: str, state: MetaState, position: tuple[int, int]) -> None:
        """Replace the whole copy by `state` as of `position`."""
        db = self.db
        db.execute("BEGIN")
        try:
            for t in ("kv", "inode", "dent", "block", "xattr", "patch"):
                db.execute(f"DELETE FROM {t}")
            self._bulk_load(state)
            db.execute("INSERT INTO kv VALUES ('uuid', ?)", (msgpack.packb(uuid),))
            db.execute("INSERT INTO kv VALUES ('position', ?)", (msgpack.packb(list(position)),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def advance(self, position: tuple[int, int]) -> None:
        """Move the position without changing the copy: for a position whose
        segments between carry no records (a new epoch's begin segment)."""
        self.db.execute("INSERT OR REPLACE INTO kv VALUES ('position', ?)", (msgpack.packb(list(position)),))

    def _bulk_load(self, state: MetaState) -> None:
        """Fill empty tables from `state` with one executemany per table:
        a mount on a new host does this before serving, so it is on the
        planned-move path (record-by-record inserts cost ~4x more)."""
        x = self.db.executemany
        x("INSERT INTO inode VALUES (?, ?)",
          ((ino, msgpack.packb(n.to_record(), use_bin_type=True)) for ino, n in state.inodes.items()))
        x("INSERT INTO xattr VALUES (?, ?, ?)",
          ((ino, k, v) for ino, n in state.inodes.items() for k, v in n.xattrs.items()))
        x("INSERT INTO dent VALUES (?, ?, ?, ?)",
          ((p, name, c, cookie) for p, m in state.entries.items() for name, (c, cookie) in m.items()))
        x("INSERT INTO block VALUES (?, ?, ?, ?, ?, ?)",
          ((ino, idx, r.hash, r.length, r.epoch, r.src) for ino, bm in state.blocks.items() for idx, r in bm.items()))
        x("INSERT INTO patch (ino, idx, off, data) VALUES (?, ?, ?, ?)",
          ((ino, idx, off, d) for ino, pm in state.patches.items() for idx, pl in pm.items() for off, d in pl))

    def apply_segment(self, records: list, position: tuple[int, int]) -> None:
        """Apply one committed segment and advance the position, atomically."""
        db = self.db
        db.execute("BEGIN")
        try:
            self._apply(records)
            db.execute("INSERT OR REPLACE INTO kv VALUES ('position', ?)", (msgpack.packb(list(position)),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _apply(self, records: Iterable[list]) -> None:
        x = self.db.execute
        for r in records:
            t = r[0]
            if t == INODE:
                x("INSERT OR REPLACE INTO inode VALUES (?, ?)", (r[1], msgpack.packb(r, use_bin_type=True)))
            elif t == DENT:
                x("INSERT OR REPLACE INTO dent VALUES (?, ?, ?, ?)", (r[1], r[2], r[3], r[4]))
            elif t == DENT_DEL:
                x("DELETE FROM dent WHERE parent=? AND name=?", (r[1], r[2]))
            elif t == BLOCK:
                if x("SELECT 1 FROM inode WHERE ino=?", (r[1],)).fetchone():
                    x("INSERT OR REPLACE INTO block VALUES (?, ?, ?, ?, ?, ?)",
                      (r[1], r[2], r[3], r[4], r[5] if len(r) > 5 else 0, r[6] if len(r) > 6 else 0))
                    x("DELETE FROM patch WHERE ino=? AND idx=?", (r[1], r[2]))
            elif t == PATCH:
                if x("SELECT 1 FROM inode WHERE ino=?", (r[1],)).fetchone():
                    x("INSERT INTO patch (ino, idx, off, data) VALUES (?, ?, ?, ?)", (r[1], r[2], r[3], r[4]))
            elif t == TRUNC:
                ino, size = r[1], r[2]
                idx, rem = divmod(size, self.bs)
                first_gone = idx + 1 if rem else idx
                x("DELETE FROM block WHERE ino=? AND idx>=?", (ino, first_gone))
                x("DELETE FROM patch WHERE ino=? AND idx>=?", (ino, first_gone))
                if rem:
                    x("UPDATE block SET length=MIN(length, ?) WHERE ino=? AND idx=?", (rem, ino, idx))
                    x("DELETE FROM patch WHERE ino=? AND idx=? AND off>=?", (ino, idx, rem))
                    x("UPDATE patch SET data=substr(data, 1, ? - off) WHERE ino=? AND idx=? AND off + length(data) > ?",
                      (rem, ino, idx, rem))
            elif t == HOLE:
                ino, first, end = r[1], r[2], min(r[2] + r[3], (1 << 63) - 1)   # SQLite ints are signed 64-bit
                x("DELETE FROM block WHERE ino=? AND idx>=? AND idx<?", (ino, first, end))
                x("DELETE FROM patch WHERE ino=? AND idx>=? AND idx<?", (ino, first, end))
            elif t == INODE_DEL:
                for table, col in (("inode", "ino"), ("dent", "parent"), ("block", "ino"), ("xattr", "ino"),
                                   ("patch", "ino")):
                    x(f"DELETE FROM {table} WHERE {col}=?", (r[1],))
            elif t == XATTR:
                if x("SELECT 1 FROM inode WHERE ino=?", (r[1],)).fetchone():
                    x("INSERT OR REPLACE INTO xattr VALUES (?, ?, ?)", (r[1], r[2], r[3]))
            elif t == XATTR_DEL:
                x("DELETE FROM xattr WHERE ino=? AND name=?", (r[1], r[2]))

    # ------------------------------------------------------------- loading
    def records(self) -> Iterable[list]:
        """Records that recreate the copy (inodes first, then the rest)."""
        return _records(self.db)

    def load(self) -> MetaState:
        return MetaState.from_records(self.bs, self.records())

    def close(self) -> None:
        self.db.close()


def read_committed(path: Path, block_size: int, uuid: str) -> tuple[tuple[int, int], MetaState, list] | None:
    """(position, state, records) of the working copy at `path`, read in one
    transaction of a separate read-only connection: WAL gives it a consistent
    view while the committer goes on applying segments. What a snapshot of
    a volume that never goes quiet is made from (fsd/gc/live.py). None if
    the copy is not this volume's."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")
        try:
            rows = dict(db.execute("SELECT k, v FROM kv").fetchall())
            if "uuid" not in rows or msgpack.unpackb(rows["uuid"], raw=False) != uuid or "position" not in rows:
                return None
            e, s = msgpack.unpackb(rows["position"], raw=False)
            records = list(_records(db))
        finally:
            db.execute("COMMIT")
    finally:
        db.close()
    return (e, s), MetaState.from_records(block_size, records), records


def _records(db: sqlite3.Connection) -> Iterable[list]:
    """Records that recreate the copy in `db` (inodes first, then the rest)."""
    q = db.execute
    for (rec,) in q("SELECT rec FROM inode ORDER BY ino"):
        yield msgpack.unpackb(rec, raw=False)
    for ino, name, value in q("SELECT ino, name, value FROM xattr"):
        yield [XATTR, ino, bytes(name), bytes(value)]
    for parent, name, ino, cookie in q("SELECT parent, name, ino, cookie FROM dent ORDER BY parent, cookie"):
        yield [DENT, parent, bytes(name), ino, cookie]
    for ino, idx, h, length, epoch, src in q("SELECT ino, idx, hash, length, epoch, src FROM block"):
        yield [BLOCK, ino, idx, bytes(h), length] + ([epoch, src] if src else [epoch] if epoch else [])
    for ino, idx, off, data in q("SELECT ino, idx, off, data FROM patch ORDER BY n"):
        yield [PATCH, ino, idx, off, bytes(data)]
