"""fsd/datapath/commitplan.py: what one commit round uploads, carries inline, writes and settles, as tables."""
from __future__ import annotations

import pytest

from fsd.datapath.commitplan import Batch, CommitPlan, Limits, plan_commit, segment_records
from fsd.meta.records import BLOCK, PATCH
from fsd.meta.state import BlockRef

BS = 1 << 20
SMALL = Limits(inline_max=100, patch_max_per_block=250, patch_budget=1000)


def blk(fill: int = 1) -> bytes:
    return bytes([fill]) * 4096


def batch(bid: int, blocks: dict, extents: dict | None = None, records: list | None = None) -> Batch:
    return Batch(bid, records or [["r", bid]], blocks, sum(len(b) for b in blocks.values()), 0, extents or {})


# name, batches, patch_bytes, existing patches per block, -> uploads, inline {batch: {key: ranges}}
CASES = [
    ("a whole-block write is uploaded",
     [batch(1, {(5, 0): blk()}, {(5, 0): None})], 0, {}, [(0, (5, 0))], {}),
    ("a block with no extents recorded counts as whole",
     [batch(1, {(5, 0): blk()})], 0, {}, [(0, (5, 0))], {}),
    ("a small write goes inline",
     [batch(1, {(5, 0): blk()}, {(5, 0): [(10, 20)]})], 0, {}, [], {0: {(5, 0): [(10, 20)]}}),
    ("exactly inline_max bytes still go inline",
     [batch(1, {(5, 0): blk()}, {(5, 0): [(0, 100)]})], 0, {}, [], {0: {(5, 0): [(0, 100)]}}),
    ("one byte over inline_max is uploaded",
     [batch(1, {(5, 0): blk()}, {(5, 0): [(0, 101)]})], 0, {}, [(0, (5, 0))], {}),
    ("the block's own patch cap",
     [batch(1, {(5, 0): blk()}, {(5, 0): [(0, 60)]})], 0, {(5, 0): 200}, [(0, (5, 0))], {}),
    ("the volume's budget is spent",
     [batch(1, {(5, 0): blk()}, {(5, 0): [(0, 60)]})], 950, {}, [(0, (5, 0))], {}),
    ("the budget goes to the blocks first written first",
     [batch(1, {(5, 0): blk(), (6, 0): blk()}, {(5, 0): [(0, 90)], (6, 0): [(0, 90)]})], 850, {},
     [(0, (6, 0))], {0: {(5, 0): [(0, 90)]}}),
    ("a block rewritten by a later batch is stored once, for the latest",
     [batch(1, {(5, 0): blk(1)}, {(5, 0): None}), batch(2, {(5, 0): blk(2)}, {(5, 0): None})], 0, {},
     [(1, (5, 0))], {}),
    ("small writes in two batches merge into the latest batch's patch",
     [batch(1, {(5, 0): blk(1)}, {(5, 0): [(0, 10)]}), batch(2, {(5, 0): blk(2)}, {(5, 0): [(5, 30)]})], 0, {},
     [], {1: {(5, 0): [(0, 30)]}}),
    ("written whole once in the group: uploaded even if the latest write is small",
     [batch(1, {(5, 0): blk(1)}, {(5, 0): None}), batch(2, {(5, 0): blk(2)}, {(5, 0): [(0, 10)]})], 0, {},
     [(1, (5, 0))], {}),
    ("ranges past a short block's end are clipped",
     [batch(1, {(5, 0): b"x" * 50}, {(5, 0): [(40, 90), (60, 80)]})], 0, {}, [], {0: {(5, 0): [(40, 50)]}}),
    ("no blocks: records only",
     [batch(1, {})], 0, {}, [], {}),
]


@pytest.mark.parametrize("name,batches,patch_bytes,existing,uploads,inline", CASES, ids=[c[0] for c in CASES])
def test_plan(name, batches, patch_bytes, existing, uploads, inline):
    plan = plan_commit(batches, patch_bytes, existing, SMALL)
    assert plan.uploads == uploads
    got = {i: {k: [(off, off + len(d)) for off, d in pieces] for k, pieces in m.items()}
           for i, m in enumerate(plan.inline) if m}
    assert got == inline
    assert plan.batch_id == batches[-1].id
    for i, m in enumerate(plan.inline):                 # inline bytes are the latest batch's bytes
        for key, pieces in m.items():
            raw = batches[i].blocks[key]
            assert all(d == raw[off:off + len(d)] for off, d in pieces)


def test_segment_records_batch_by_batch():
    b1 = batch(1, {(5, 0): blk(1), (6, 0): blk()}, {(5, 0): None, (6, 0): [(0, 4)]}, [["meta", 1]])
    b2 = batch(2, {(7, 1): blk()}, {(7, 1): None}, [["meta", 2]])
    plan = plan_commit([b1, b2], 0, {}, SMALL)
    assert plan == CommitPlan(uploads=[(0, (5, 0)), (1, (7, 1))],
                              inline=[{(6, 0): [(0, b"\x01" * 4)]}, {}], batch_id=2)
    refs = [{(5, 0): BlockRef(b"h5", 4096, 3)}, {(7, 1): BlockRef(b"h7", 4096, 3)}]
    assert segment_records([b1, b2], plan, refs) == [
        ["meta", 1], [BLOCK, 5, 0, b"h5", 4096, 3], [PATCH, 6, 0, 0, b"\x01" * 4],
        ["meta", 2], [BLOCK, 7, 1, b"h7", 4096, 3],
    ]


def test_default_limits_are_the_documented_ones():
    assert Limits() == Limits(inline_max=64 << 10, patch_max_per_block=256 << 10, patch_budget=16 << 20)
    big = batch(1, {(5, 0): bytes(BS)}, {(5, 0): [(0, 64 << 10)]})
    assert plan_commit([big], 0, {}).uploads == []
    big.extents[(5, 0)] = [(0, (64 << 10) + 1)]
    assert plan_commit([big], 0, {}).uploads == [(0, (5, 0))]
