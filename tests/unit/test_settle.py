"""Settling committed batches into the in-memory state when several
batches are in flight at once (durability=local: the cutter runs ahead of
the uploader). Memory must end equal to a replay of the journal the
committer wrote, whatever the interleaving of cuts, writes and truncates.

Regression for issue 7: a block cut in batch 1 and again in batch 2 lost
batch 1's BLOCK in memory, so batch 2's PATCH was laid over a stale base
and acknowledged bytes read back as zeros (and went into snapshots)."""
from __future__ import annotations

import stat

from fsd.datapath.data import DataLayer, overlay
from fsd.datapath.overlay import content, content_slice, version_bytes
from fsd.meta.ops import MetaOps
from fsd.meta.records import BLOCK, HOLE, INODE, PATCH
from fsd.meta.state import BlockRef, MetaState, new_volume_records

BS = 4096
INO = 2
K = (INO, 0)


def _layer() -> tuple[DataLayer, MetaState]:
    state = MetaState.from_records(BS, new_volume_records(1) + [
        [INODE, INO, stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, None]])
    # No BlockIO: every block here is new, so nothing is ever fetched.
    return DataLayer(MetaOps(state), bio=None, block_size=BS, dirty_limit=1 << 30), state  # type: ignore[arg-type]


def _journal_replay(journal: list[list]) -> MetaState:
    s = MetaState.from_records(BS, new_volume_records(1) + [
        [INODE, INO, stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, None]])
    s.apply_all(journal)
    return s


async def test_older_batch_of_a_block_settles_before_a_newer_patch():
    data, state = _layer()
    await data.write(INO, 0, b"A" * 100, 1)
    b1, _, _ = data.cut(1)
    await data.write(INO, 100, b"B" * 10, 2)       # dirty copy made from batch 1's in-flight buffer
    b2, ext2, _ = data.cut(2)
    assert ext2[K] == [(100, 110)]
    ref1 = BlockRef(b"1" * 32, 100)
    journal = [[BLOCK, INO, 0, ref1.hash, ref1.length], [PATCH, INO, 0, 100, b"B" * 10]]
    await data.settle(1, b1.keys(), {K: ref1}, version_bytes(b1[K]))
    await data.settle(2, b2.keys(), {}, version_bytes(b2[K]), inline={K: [(100, b"B" * 10)]})
    assert state.blocks[INO][0] == ref1, "batch 1's BLOCK must reach memory although batch 2 cut the block too"
    assert state.block_patches(INO, 0) == [(100, b"B" * 10)]
    assert not data.inflight and not data.unsettled and data.inflight_bytes == 0
    replay = _journal_replay(journal)
    assert replay.blocks == state.blocks and replay.patches == state.patches


async def test_truncate_between_cuts_keeps_memory_equal_to_replay():
    """Batch 1 writes the block, a truncate clips it (TRUNC is in memory at
    once, and in the journal after batch 1's BLOCK), batch 2 writes again:
    the clipped block is committed whole, and memory ends equal to replay."""
    data, state = _layer()
    ops = data.ops
    await data.write(INO, 0, b"A" * 300, 1)
    b1, _, _ = data.cut(1)
    recs1 = ops.take_pending()
    ops.setattr(INO, 2, size=50)
    data.truncate(INO, 50)
    await data.write(INO, 60, b"C" * 5, 3)
    recs2 = ops.take_pending()
    b2, ext2, _ = data.cut(2)
    assert ext2[K] is None, "a block whose in-flight content was clipped is committed whole"
    assert content(b2[K]) == b"A" * 50 + bytes(10) + b"C" * 5
    ref1, ref2 = BlockRef(b"1" * 32, 300), BlockRef(b"2" * 32, 65)
    journal = recs1 + [[BLOCK, INO, 0, ref1.hash, 300]] + recs2 + [[BLOCK, INO, 0, ref2.hash, 65]]
    await data.settle(1, b1.keys(), {K: ref1}, version_bytes(b1[K]))
    await data.settle(2, b2.keys(), {K: ref2}, version_bytes(b2[K]))
    replay = _journal_replay(journal)
    assert replay.blocks == state.blocks == {INO: {0: ref2}}
    assert replay.inodes[INO].size == state.inodes[INO].size == 65


async def test_group_of_batches_settles_the_latest_content_once():
    """The uploader puts several batches in one segment: only the latest
    batch of a block carries its content (a PATCH of the union of ranges)."""
    data, state = _layer()
    await data.write(INO, 0, b"A" * 10, 1)
    b1, e1, _ = data.cut(1)
    await data.write(INO, 20, b"B" * 10, 2)
    b2, e2, _ = data.cut(2)
    union = [(0, 10), (20, 30)]
    pieces = [(s, content_slice(b2[K], s, e)) for s, e in union]
    await data.settle(1, b1.keys(), {}, version_bytes(b1[K]))
    await data.settle(2, b2.keys(), {}, version_bytes(b2[K]), inline={K: pieces})
    assert overlay(b"", state.block_patches(INO, 0)) == b"A" * 10 + bytes(10) + b"B" * 10
    assert not data.inflight and not data.unsettled


async def test_punch_of_a_block_in_flight_is_journaled():
    """A block cut into a batch that is not committed yet, then punched: the
    batch's BLOCK record reaches the journal, so the HOLE must follow it
    there, although the committed state did not map the block yet when the
    punch came (found by tests/unit/test_datalayer_model.py: the punched
    data came back after a remount)."""
    data, state = _layer()
    ops = data.ops
    await data.write(INO, 0, b"A" * (3 * BS), 1)
    recs1 = ops.take_pending()
    b1, _, _ = data.cut(1)
    await data.punch(INO, BS, BS, 2)
    recs2 = ops.take_pending()
    assert [r for r in recs2 if r[0] == HOLE] == [[HOLE, INO, 1, 1]]
    refs = {key: BlockRef(bytes([key[1]]) * 32, BS) for key in b1}
    await data.settle(1, b1.keys(), refs, version_bytes(b1[K]) * 3)
    journal = recs1 + [refs[k].record(*k) for k in sorted(refs)] + recs2
    replay = _journal_replay(journal)
    assert 1 not in replay.blocks[INO] and 1 not in state.blocks[INO]


async def test_a_folded_block_is_stored_whole_and_journaled_locally_as_its_written_ranges():
    """Folding does not change a block's content: the commit stores it whole
    (its patches leave the metadata), the local journal keeps only what was
    written into it since (it used to keep the whole block)."""
    from fsd.datapath.commitplan import Batch, plan_commit
    from fsd.datapath.committer import _local_pieces
    data, state = _layer()
    await data.write(INO, 0, b"A" * 100, 1)
    b1, _, _ = data.cut(1)
    await data.settle(1, b1.keys(), {}, version_bytes(b1[K]), inline={K: [(0, b"A" * 100)]})
    assert state.block_patches(INO, 0)
    assert await data.fold(INO, 0)
    await data.write(INO, 200, b"B" * 10, 2)
    b2, ext2, whole2 = data.cut(2)
    assert whole2 == {K} and ext2[K] == [(200, 210)]
    batch = Batch(2, [], b2, version_bytes(b2[K]), 0, ext2, whole2)
    assert await _local_pieces(batch, data) == [(INO, 0, 200, b"B" * 10)]
    plan = plan_commit([batch], state.patch_bytes, {K: 100})
    assert plan.uploads == [(0, K)] and not plan.inline[0]
