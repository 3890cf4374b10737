"""The local journal (durability=local): log files whose torn or damaged
tail is ignored, never misread; preallocated with zeros (records overwrite
them in place) or, when the disk is too full for that, appended to."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import fsd.datapath.localjournal as lj
from fsd.datapath.localjournal import MAGIC, LocalEntry, LocalJournal
from fsd.format.framing import frame


def _e(batch: int, payload: bytes = b"x" * 100) -> LocalEntry:
    return LocalEntry(epoch=3, batch=batch, records=[[7, 2, b"user.a", b"v"]],
                      blocks=[(2, 0, 4096, payload), (2, 1, None, b"whole")])


def test_round_trip_in_order(tmp_path: Path):
    j = LocalJournal(tmp_path)
    for b in (1, 2, 3):
        j.append(_e(b))
    j.close()
    got = LocalJournal(tmp_path).entries()
    assert [e.batch for e in got] == [1, 2, 3]
    assert got[0] == _e(1)


@pytest.fixture
def unpreallocated(monkeypatch):
    """Log files that grow as they are written (a disk too full to preallocate)."""
    monkeypatch.setattr(lj, "PREALLOC_BYTES", 0)


@pytest.mark.usefixtures("unpreallocated")
def test_torn_tail_is_ignored_and_earlier_entries_kept(tmp_path: Path):
    j = LocalJournal(tmp_path)
    j.append(_e(1))
    j.append(_e(2))
    j.close()
    (log,) = tmp_path.glob("log-*")
    data = log.read_bytes()
    log.write_bytes(data[:-7])                 # a crash mid-append of entry 2
    assert [e.batch for e in LocalJournal(tmp_path).entries()] == [1]
    log.write_bytes(data[:3])                  # not even a whole length field
    assert LocalJournal(tmp_path).entries() == []


def test_torn_record_in_preallocated_space_is_ignored(tmp_path: Path):
    """A crash mid-overwrite leaves part of a record and the zeros after it."""
    j = LocalJournal(tmp_path)
    j.append(_e(1))
    first = j._size
    j.append(_e(2))
    end = j._size
    j.close()
    (log,) = tmp_path.glob("log-*")
    assert log.stat().st_size == lj.PREALLOC_BYTES, "records overwrite the zeros; the size never changes"
    data = bytearray(log.read_bytes())
    for cut in (first + 2, first + 9, end - 7):
        torn = bytearray(data)
        torn[cut:end] = bytes(end - cut)
        log.write_bytes(bytes(torn))
        assert [e.batch for e in LocalJournal(tmp_path).entries()] == [1], cut


def test_failed_append_is_zeroed_so_the_next_one_takes_its_place(tmp_path: Path, monkeypatch):
    j = LocalJournal(tmp_path)
    j.append(_e(1))
    real = os.fdatasync
    calls = {"n": 0}

    def failing(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "I/O error")
        real(fd)

    monkeypatch.setattr(lj.os, "fdatasync", failing)
    with pytest.raises(OSError):
        j.append(_e(2, b"z" * 5000))           # written, then its fdatasync fails
    monkeypatch.setattr(lj.os, "fdatasync", real)
    assert [e.batch for e in LocalJournal(tmp_path).entries()] == [1], "the failed record was zeroed"
    j.append(_e(3))
    j.close()
    assert [e.batch for e in LocalJournal(tmp_path).entries()] == [1, 3]


@pytest.mark.usefixtures("unpreallocated")
def test_damaged_record_stops_reading_that_file(tmp_path: Path):
    j = LocalJournal(tmp_path)
    for b in (1, 2, 3):
        j.append(_e(b))
    j.close()
    (log,) = tmp_path.glob("log-*")
    data = bytearray(log.read_bytes())
    rec = len(data) // 3
    data[rec + 50] ^= 0xFF                     # inside entry 2
    log.write_bytes(bytes(data))
    assert [e.batch for e in LocalJournal(tmp_path).entries()] == [1]


@pytest.mark.usefixtures("unpreallocated")
def test_a_new_journal_appends_to_a_new_file_never_after_an_old_tail(tmp_path: Path):
    j = LocalJournal(tmp_path)
    j.append(_e(1))
    j.close()
    (old,) = tmp_path.glob("log-*")
    old.write_bytes(old.read_bytes()[:-5])     # torn
    j2 = LocalJournal(tmp_path)
    j2.append(_e(2))
    j2.close()
    assert len(list(tmp_path.glob("log-*"))) == 2
    assert [e.batch for e in LocalJournal(tmp_path).entries()] == [2]


def test_file_is_dropped_once_everything_is_uploaded_and_it_is_big(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(lj, "ROTATE_BYTES", 1000)
    monkeypatch.setattr(lj, "PREALLOC_BYTES", 1000)
    j = LocalJournal(tmp_path)
    j.append(_e(1, b"y" * 2000))
    j.append(_e(2))
    j.remove(3, [1])
    assert list(tmp_path.glob("log-*")), "entry 2 is still needed"
    j.remove(3, [2])
    assert list(tmp_path.glob("log-*")) == []
    j.append(_e(3))
    assert [e.batch for e in j.entries()] == [3]


def test_clear_removes_everything(tmp_path: Path):
    j = LocalJournal(tmp_path)
    j.append(_e(1))
    j.clear()
    assert list(tmp_path.iterdir()) == []
    j.append(_e(2))
    assert [e.batch for e in j.entries()] == [2]


def test_entry_files_of_the_older_layout_are_still_read(tmp_path: Path):
    (tmp_path / f"{3:016x}-{9:016x}").write_bytes(
        frame(MAGIC, {"epoch": 3, "batch": 9, "records": [], "blocks": [[2, 0, b"raw"]]}))
    (tmp_path / "half.tmp").write_bytes(b"junk")
    got = LocalJournal(tmp_path).entries()
    assert [(e.batch, e.blocks) for e in got] == [(9, [(2, 0, None, b"raw")])]
    assert not (tmp_path / "half.tmp").exists()


def test_bad_offset_type_is_refused(tmp_path: Path):
    j = LocalJournal(tmp_path)
    j.append(LocalEntry(3, 1, [], [(2, 0, "zero", b"x")]))   # type: ignore[list-item]
    j.close()
    assert LocalJournal(tmp_path).entries() == []


def test_concurrent_append_and_remove_never_lose_an_entry_nor_crash(tmp_path: Path, monkeypatch):
    """Issue 7: remove() (uploader thread) closed the log under a running
    append() (cutter thread) - os.fdatasync(None) killed the daemon - and
    could unlink a log whose newest entry was appended but not yet counted.
    With a tiny rotation size, rotation races every append; afterwards every
    appended entry that was not removed must still be readable."""
    import threading
    monkeypatch.setattr(lj, "ROTATE_BYTES", 600)
    monkeypatch.setattr(lj, "PREALLOC_BYTES", 600)
    j = LocalJournal(tmp_path)
    appended: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def appender() -> None:
        try:
            for b in range(1, 1501):
                j.append(_e(b))
                appended.append(b)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            done.set()

    removed: set[int] = set()

    def remover() -> None:
        try:
            while not done.is_set():
                todo = [b for b in list(appended) if b not in removed]
                if todo:
                    j.remove(3, todo)
                    removed.update(todo)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=appender), threading.Thread(target=remover)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    kept = {e.batch for e in LocalJournal(tmp_path).entries()}
    missing = sorted(set(appended) - removed - kept)
    assert not missing, f"appended, never removed, yet gone: {missing[:10]}"
