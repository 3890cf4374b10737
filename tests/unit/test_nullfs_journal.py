"""bench/nullfs.py's `--journal`: the fsync ceiling must do the work it
claims (every byte acknowledged is in the journal file) and must group
waiting fsyncs (fewer flushes than fsyncs), or the ceiling it reports for
durability=local is not a ceiling of anything."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import trio

ROOT = Path(__file__).resolve().parents[2]


def _nullfs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_nullfs", ROOT / "bench" / "nullfs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_nullfs", mod)
    spec.loader.exec_module(mod)
    return mod


async def test_every_acknowledged_write_is_in_the_journal_and_waiters_share_flushes(tmp_path: Path) -> None:
    journal = _nullfs().GroupJournal(str(tmp_path / "j"), size=4 << 20)
    acked: list[bytes] = []

    async def writer(i: int) -> None:
        for k in range(20):
            payload = f"writer {i} record {k};".encode()
            await journal.sync([payload])
            acked.append(payload)

    async with trio.open_nursery() as n:
        for i in range(8):
            n.start_soon(writer, i)
    on_disk = (tmp_path / "j").read_bytes()
    assert len(acked) == 160
    assert all(p in on_disk for p in acked)
    assert journal.flushes < len(acked)


async def test_one_sync_returns_only_after_its_own_flush(tmp_path: Path) -> None:
    journal = _nullfs().GroupJournal(str(tmp_path / "j"), size=1 << 20)
    await journal.sync([b"first"])
    assert journal.flushes == 1
    await journal.sync([b"second"])
    assert journal.flushes == 2
    assert b"second" in (tmp_path / "j").read_bytes()
