"""The local journal for `durability=local` (SPEC §2.1): a batch is made
durable on the cache disk (file written, fsynced, renamed, directory
fsynced) before fsync returns; the upload to the store follows within the
commit interval, after which the entry is deleted.

Entry file: `DIR/{epoch:016x}-{batch:016x}`, framed like every ferry object
(magic FRYL, see docs/format.md) holding msgpack
{epoch, batch, records, blocks: [[ino, index, offset, bytes], ...]}: with
offset nil the bytes are the whole block; otherwise they are a range written
into the block since its last commit, to lay over the block's content as
of the batch's records (a small fsync writes a few KiB, not a whole block).
A remount of the same cache directory after a crash re-commits the entries
whose batch the store does not have yet.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fsd.format.framing import CorruptObject, frame, unframe

log = logging.getLogger("ferry.localjournal")
MAGIC = b"FRYL"


@dataclass
class LocalEntry:
    epoch: int
    batch: int
    records: list
    blocks: list[tuple[int, int, int | None, bytes]]   # (ino, index, offset or None = whole, bytes)


class LocalJournal:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, epoch: int, batch: int) -> Path:
        return self.dir / f"{epoch:016x}-{batch:016x}"

    def append(self, entry: LocalEntry) -> None:
        """Durably write one batch (blocking: run in a worker thread)."""
        data = frame(MAGIC, {"epoch": entry.epoch, "batch": entry.batch, "records": entry.records,
                             "blocks": [[i, x, o, b] for i, x, o, b in entry.blocks]})
        path = self._path(entry.epoch, entry.batch)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            mv = memoryview(data)
            while mv:
                n = os.write(fd, mv)
                mv = mv[n:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def remove(self, epoch: int, batch: int) -> None:
        self._path(epoch, batch).unlink(missing_ok=True)

    def entries(self) -> list[LocalEntry]:
        out = []
        for p in sorted(self.dir.iterdir()):
            if p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
                continue
            try:
                body = unframe(MAGIC, p.read_bytes(), str(p))
                out.append(LocalEntry(body["epoch"], body["batch"], body["records"],
                                      [_block(b) for b in body["blocks"]]))
            except (CorruptObject, KeyError, TypeError, ValueError) as e:
                log.error("local journal entry %s is unreadable and is ignored: %s", p, e)
        return out

    def clear(self) -> None:
        for p in self.dir.iterdir():
            p.unlink(missing_ok=True)


def _block(item: list) -> tuple[int, int, int | None, bytes]:
    if len(item) == 3:                       # entries written before ranges existed
        ino, idx, raw = item
        return ino, idx, None, bytes(raw)
    ino, idx, off, raw = item
    if off is not None and type(off) is not int:
        raise ValueError(f"bad offset {off!r}")
    return ino, idx, off, bytes(raw)
