"""A state store in memory, for control tests on trio's MockClock.

Why: SQLite runs in worker threads, and a MockClock with autojump counts a
thread's wait as idle time, so a TTL would seem to pass during a disk write.
This store keeps the same contract (control/state.py; it runs in the
contract suite beside SQLite and etcd) with no thread and no I/O, so tests
of lease expiry and deadlines run in virtual time.
"""
from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgpack
import trio

from control.state import ANY, NEW, CasConflict, Compacted, Event, Op, Snapshot


class MemoryState:
    kind = "memory"

    def __init__(self) -> None:
        self.rows: dict[str, tuple[bytes, int]] = {}
        self.rev = 0
        self.history: list[Event] = []
        self.oldest = 0
        self._changed = trio.Event()

    async def get(self, key: str) -> tuple[Any, int] | None:
        await trio.lowlevel.checkpoint()
        row = self.rows.get(key)
        return None if row is None else (msgpack.unpackb(row[0], raw=False), row[1])

    async def scan(self, prefix: str) -> Snapshot:
        await trio.lowlevel.checkpoint()
        return Snapshot([(k, msgpack.unpackb(v, raw=False), r) for k, (v, r) in sorted(self.rows.items())
                         if k.startswith(prefix)], self.rev)

    async def revision(self) -> int:
        await trio.lowlevel.checkpoint()
        return self.rev

    async def txn(self, ops: list[Op]) -> int:
        await trio.lowlevel.checkpoint()
        for op in ops:
            actual = self.rows[op.key][1] if op.key in self.rows else NEW
            if op.expected != ANY and actual != op.expected:
                raise CasConflict(op.key, op.expected, actual, self.rev)
        writes = [op for op in ops if not op.check]
        if not writes:
            return self.rev
        self.rev += 1
        for op in writes:
            if op.delete:
                if self.rows.pop(op.key, None) is not None:
                    self.history.append(Event(op.key, None, self.rev))
            else:
                self.rows[op.key] = (msgpack.packb(op.value, use_bin_type=True), self.rev)
                self.history.append(Event(op.key, op.value, self.rev))
        self._changed.set()
        self._changed = trio.Event()
        return self.rev

    async def compact(self, revision: int) -> None:
        self.history = [e for e in self.history if e.revision > revision]
        self.oldest = max(self.oldest, revision)

    async def watch(self, prefix: str, after: int) -> AsyncGenerator[list[Event], None]:
        while True:
            if after < self.oldest:
                raise Compacted(after, self.oldest)
            batch = [e for e in self.history if e.revision > after and e.key.startswith(prefix)]
            after = max(after, self.rev)
            if batch:
                yield batch
            else:
                await self._changed.wait()

    async def aclose(self) -> None:
        pass
