"""Inline block data (PATCH records): the in-memory state and the SQLite
working copy must agree on every transition, and snapshots must carry it."""
from __future__ import annotations

import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.datapath.commitplan import merge_extents
from fsd.datapath.data import overlay
from fsd.datapath.localdb import WorkingCopy
from fsd.meta.check import check_state
from fsd.meta.records import BLOCK, INODE, INODE_DEL, PATCH, TRUNC, RecordError, decode_records, encode_records
from fsd.meta.state import MetaState, new_volume_records

BS = 4096
H = b"h" * 32


def _file(ino: int = 2, size: int = 3 * BS) -> list:
    return [INODE, ino, stat.S_IFREG | 0o644, 0, 0, 1, size, 0, 0, 0, 0, None]


def _both(tmp_path, recs: list) -> MetaState:
    """Apply `recs` to a MetaState and to a WorkingCopy; they must agree."""
    state = MetaState.from_records(BS, new_volume_records(1))
    wc = WorkingCopy(tmp_path / "wc.db", BS)
    wc.reset("u", state, (1, 1))
    state.apply_all(recs)
    wc.apply_segment(recs, (1, 2))
    assert wc.load() == state
    again = MetaState.from_records(BS, list(state.snapshot_records()))
    assert again == state, "a snapshot must rebuild patches too"
    fresh = WorkingCopy(tmp_path / "fresh.db", BS)       # a new host's copy: bulk-loaded
    fresh.reset("u", state, (1, 2))
    assert fresh.load() == state
    return state


def test_patch_overlays_in_order_and_extends_the_block(tmp_path):
    s = _both(tmp_path, [_file(), [BLOCK, 2, 0, H, 100], [PATCH, 2, 0, 50, b"AAAA"], [PATCH, 2, 0, 52, b"BBBBBBBB"]])
    assert s.block_patches(2, 0) == [(50, b"AABBBBBBBB")]      # kept canonical: merged
    assert s.block_length(2, 0) == 100
    assert overlay(b"." * 100, s.block_patches(2, 0))[48:62] == b"..AABBBBBBBB.."
    (tmp_path / "2").mkdir()
    s = _both(tmp_path / "2", [_file(), [PATCH, 2, 1, 10, b"tail"]])
    assert s.block_length(2, 1) == 14 and s.patch_bytes == 4


def test_block_record_replaces_the_patches_of_its_block_only(tmp_path):
    s = _both(tmp_path, [_file(), [PATCH, 2, 0, 0, b"a"], [PATCH, 2, 1, 0, b"b"], [BLOCK, 2, 0, H, BS]])
    assert s.block_patches(2, 0) is None
    assert s.block_patches(2, 1) == [(0, b"b")]
    assert s.patch_bytes == 1


def test_trunc_clips_and_drops_patches(tmp_path):
    s = _both(tmp_path, [_file(size=3 * BS), [PATCH, 2, 0, 100, b"x" * 200], [PATCH, 2, 0, 400, b"y" * 10],
                         [PATCH, 2, 1, 0, b"z"], [TRUNC, 2, 150], _file(size=150)])
    assert s.block_patches(2, 0) == [(100, b"x" * 50)]
    assert s.block_patches(2, 1) is None
    assert s.patch_bytes == 50
    assert s.block_length(2, 0) == 150
    assert not [p for p in check_state(s) if "inline" in p]


def test_trunc_at_block_boundary_drops_that_block(tmp_path):
    s = _both(tmp_path, [_file(), [PATCH, 2, 1, 5, b"q"], [TRUNC, 2, BS], _file(size=BS)])
    assert s.patches == {} and s.patch_bytes == 0


def test_inode_delete_drops_patches(tmp_path):
    s = _both(tmp_path, [_file(), [PATCH, 2, 0, 5, b"q"], [INODE_DEL, 2]])
    assert s.patches == {} and s.patch_bytes == 0


def test_patch_of_unknown_inode_is_ignored_like_a_late_block(tmp_path):
    s = _both(tmp_path, [[PATCH, 9, 0, 0, b"q"]])
    assert s.patches == {}


def test_patch_past_the_block_size_is_refused():
    s = MetaState.from_records(BS, new_volume_records(1) + [_file()])
    with pytest.raises(RecordError, match="past the block size"):
        s.apply([PATCH, 2, 0, BS - 2, b"abc"])


def test_patch_record_codec_and_validation():
    rec = [PATCH, 2, 7, 12, b"data"]
    assert decode_records(encode_records([rec])) == [rec]
    for bad in ([PATCH, 2, 7, 12, b""], [PATCH, 2, 7, -1, b"x"], [PATCH, 2, 7, 12, "str"], [PATCH, 0, 7, 12, b"x"]):
        with pytest.raises(RecordError):
            decode_records(encode_records([bad]))


def test_check_state_flags_inline_data_past_the_size():
    s = MetaState.from_records(BS, new_volume_records(1) + [_file(size=10), [PATCH, 2, 0, 8, b"abcd"]])
    assert any("beyond size" in p for p in check_state(s))


@pytest.mark.parametrize("ranges,merged", [
    ([], []),
    ([(5, 10), (0, 3)], [(0, 3), (5, 10)]),
    ([(0, 3), (3, 6)], [(0, 6)]),
    ([(0, 10), (2, 4)], [(0, 10)]),
    ([(8, 12), (0, 9)], [(0, 12)]),
])
def test_merge_extents(ranges, merged):
    assert merge_extents(ranges) == merged


def test_overlay_fills_gaps_with_zeros():
    assert overlay(b"ab", [(4, b"cd"), (0, b"X")]) == b"Xb\0\0cd"


@given(st.lists(st.tuples(st.integers(0, 300), st.binary(min_size=0, max_size=80)), max_size=40))
def test_patch_pieces_stay_canonical_and_read_as_laid_in_order(pieces):
    """Merging overlapping or touching pieces never changes what the block
    reads as: the canonical list overlays to the same bytes as the pieces
    laid in order, and holds each byte once."""
    s = MetaState.from_records(BS, new_volume_records(1) + [_file()])
    for off, data in pieces:
        s.apply([PATCH, 2, 0, off, data])
    pl = s.block_patches(2, 0) or []
    assert overlay(b"", pl) == overlay(b"", pieces)
    assert all(a[0] + len(a[1]) < b[0] for a, b in zip(pl, pl[1:], strict=False)), pl
    assert s.patch_bytes == sum(len(d) for _, d in pl)
    assert s.block_length(2, 0) == len(overlay(b"", pieces))
