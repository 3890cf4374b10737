"""Punching holes (fallocate PUNCH_HOLE / ZERO_RANGE, a block volume's
discards): the plan's pieces, the HOLE record's effect on the state, and
that nothing past the range or the file's end changes."""
from __future__ import annotations

import stat

import pytest

from fsd.datapath.data import punch_plan
from fsd.meta.ops import FsError, MetaOps
from fsd.meta.records import HOLE, RecordError, validate_record
from fsd.meta.state import BlockRef, MetaState, new_volume_records


def apply_plan(data: bytearray, bs: int, first: int, count: int, edges: list[tuple[int, int]]) -> bytearray:
    """What a file's bytes become under a plan: holes and zero writes."""
    out = bytearray(data)
    for i in range(first, first + count):
        lo, hi = i * bs, min((i + 1) * bs, len(out))
        out[lo:hi] = bytes(max(0, hi - lo))
    for off, n in edges:
        out[off:off + n] = bytes(n)
    return out


@pytest.mark.parametrize("bs", [4, 8])
def test_punch_plan_zeroes_exactly_the_range_and_writes_only_partial_blocks(bs):
    for size in range(0, 4 * bs + 3):
        data = bytearray(range(1, size + 1))
        for off in range(0, size + 2):
            for length in range(1, 4 * bs + 3):
                first, count, edges = punch_plan(off, length, size, bs)
                got = apply_plan(data, bs, first, count, edges)
                want = bytearray(data)
                end = min(off + length, size)
                if end > off:
                    want[off:end] = bytes(end - off)
                assert got == want, (size, off, length, first, count, edges)
                assert len(edges) <= 2 and all(n < bs for _, n in edges) or count == 0
                for o, n in edges:        # zero writes never span a whole block
                    assert o // bs == (o + n - 1) // bs and n < bs or count == 0
                if count:                  # whole blocks only, inside the file
                    assert first * bs >= off and first + count <= -(-size // bs)


def _file(bs: int = 8) -> tuple[MetaOps, int]:
    st = MetaState.from_records(bs, new_volume_records(1))
    m = MetaOps(st)
    ino = m.create(1, b"f", stat.S_IFREG | 0o644, 0, 0, 1).ino
    m.note_write(ino, 5 * bs, 1)
    for i in range(5):
        m.set_block(ino, i, BlockRef(bytes([i]) * 32, bs))
    m.take_pending()
    return m, ino


def test_hole_drops_the_blocks_in_range_only_and_keeps_the_size():
    m, ino = _file()
    m.punch(ino, 1, 2, 7)
    assert sorted(m.state.blocks[ino]) == [0, 3, 4]
    assert m.state.inodes[ino].size == 40 and m.state.inodes[ino].mtime_ns == 7
    recs = m.take_pending()
    assert [HOLE, ino, 1, 2] in recs
    m2, ino2 = _file()                                  # replay of the record: the same state
    m2.state.apply([HOLE, ino2, 1, 2])
    assert m2.state.blocks[ino2].keys() == m.state.blocks[ino].keys()


def test_a_punch_of_unmapped_blocks_writes_no_record_and_huge_counts_are_cheap():
    m, ino = _file()
    m.punch(ino, 10, 5, 2)
    assert not [r for r in m.take_pending() if r[0] == HOLE]
    m.punch(ino, 2, (1 << 64) - 3, 3)                   # to the end of any file: no walk over the range
    assert sorted(m.state.blocks[ino]) == [0, 1]
    with pytest.raises(FsError):
        m.punch(1, 0, 1, 4)                             # a directory


def test_hole_record_shape_is_checked():
    validate_record([HOLE, 2, 0, 1])
    for bad in ([HOLE, 2, 0, 0], [HOLE, 0, 0, 1], [HOLE, 2, -1, 1], [HOLE, 2, 0], [HOLE, 2, 0, True]):
        with pytest.raises(RecordError):
            validate_record(bad)
