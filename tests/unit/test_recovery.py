"""The pure recovery planner (fsd.datapath.recovery): which locally acknowledged
batches are appended to the crashed epoch, which are already in the store,
which can no longer apply; and how they become segments."""
from __future__ import annotations

import stat

from fsd.datapath.data import overlay
from fsd.datapath.localjournal import LocalEntry
from fsd.datapath.recovery import EpochTail, WholeBlock, entry_items, plan_recovery, plan_segments, segment_records
from fsd.meta.records import BLOCK, INODE, PATCH, TRUNC
from fsd.meta.state import MetaState, new_volume_records

BS = 4096


def _e(epoch: int, batch: int, blocks=(), records=()) -> LocalEntry:
    return LocalEntry(epoch, batch, list(records), list(blocks))


def _tail(epoch: int, *, sealed: bool = False, next_seq: int = 5, batch: int = 0) -> EpochTail:
    return EpochTail(epoch=epoch, sealed=sealed, next_seq=next_seq, committed_batch=batch)


def test_own_latest_unsealed_epoch_resumes_from_its_last_committed_batch():
    entries = [_e(7, b) for b in (3, 4, 5, 6)]
    plan = plan_recovery(entries, own_epoch=7, latest_epoch=7, tails={7: _tail(7, batch=4)})
    assert plan.resume == _tail(7, batch=4)
    assert [e.batch for e in plan.todo] == [5, 6]
    assert plan.already == 2 and not plan.dropped


def test_nothing_left_to_append_means_no_resume():
    plan = plan_recovery([_e(7, 1), _e(7, 2)], own_epoch=7, latest_epoch=7, tails={7: _tail(7, batch=2)})
    assert plan.resume is None and plan.already == 2 and not plan.todo and not plan.dropped


def test_someone_else_owned_the_volume_since_drops_what_the_store_lacks():
    entries = [_e(7, 1), _e(7, 2), _e(7, 3)]
    for own, latest, sealed in [(7, 8, True), (7, 8, False), (7, 7, True), (None, 7, False), (6, 7, False)]:
        plan = plan_recovery(entries, own_epoch=own, latest_epoch=latest, tails={7: _tail(7, sealed=sealed, batch=1)})
        assert plan.resume is None, (own, latest, sealed)
        assert [e.batch for e in plan.dropped] == [2, 3] and plan.already == 1
        assert plan.dropped_epochs == [7]


def test_entries_of_an_older_epoch_never_apply_over_a_newer_one():
    """A leftover of epoch 6 must not be appended to epoch 7 (its base is
    gone): only the own, newest epoch resumes."""
    entries = [_e(6, 9), _e(7, 1)]
    plan = plan_recovery(entries, own_epoch=7, latest_epoch=7,
                         tails={6: _tail(6, sealed=True, batch=4), 7: _tail(7, batch=0)})
    assert [(e.epoch, e.batch) for e in plan.todo] == [(7, 1)]
    assert [(e.epoch, e.batch) for e in plan.dropped] == [(6, 9)]


def test_duplicate_entries_are_appended_once():
    plan = plan_recovery([_e(7, 1), _e(7, 2), _e(7, 2)], own_epoch=7, latest_epoch=7, tails={7: _tail(7)})
    assert [e.batch for e in plan.todo] == [1, 2] and plan.already == 1


def test_segments_keep_order_bounds_and_whole_entries():
    entries = [_e(1, b, blocks=[(2, 0, 0, b"x" * 1000)], records=[[TRUNC, 2, b]]) for b in range(1, 11)]
    segs = plan_segments(entries, max_bytes=3000, max_entries=100)
    assert [s.last_batch for s in segs] == [2, 4, 6, 8, 10]
    flat = [it for s in segs for it in s.items]
    assert flat == [it for e in entries for it in entry_items(e)]
    assert len(plan_segments(entries, max_bytes=1 << 30, max_entries=3)) == 4
    big = [_e(1, 1, blocks=[(2, 0, 0, b"y" * 10_000)])]
    assert len(plan_segments(big, max_bytes=100)) == 1, "an entry larger than the bound still goes, alone"


def test_entry_means_the_same_as_its_segment_records():
    """Records first, then the ranges laid over the block as those records
    left it; a whole block becomes a BLOCK record once uploaded."""
    ino = 2
    base = MetaState.from_records(BS, new_volume_records(1) + [
        [INODE, ino, stat.S_IFREG | 0o644, 0, 0, 1, 300, 0, 0, 0, 0, None], [PATCH, ino, 0, 0, b"o" * 300]])
    entry = _e(3, 8, records=[[TRUNC, ino, 100], [INODE, ino, stat.S_IFREG | 0o644, 0, 0, 1, 210, 0, 0, 0, 0, None]],
               blocks=[(ino, 0, 200, b"n" * 10), (ino, 1, None, b"w" * BS)])
    items = entry_items(entry)
    whole = [it for it in items if isinstance(it, WholeBlock)]
    assert len(whole) == 1 and whole[0].raw == b"w" * BS
    recs = segment_records(items, {id(whole[0]): (b"h" * 32, BS, 3)})
    assert recs[-1] == [BLOCK, ino, 1, b"h" * 32, BS, 3]
    base.apply_all(recs)
    assert overlay(b"", base.block_patches(ino, 0)) == b"o" * 100 + bytes(100) + b"n" * 10
    assert base.inodes[ino].size == 210
