"""Pure rules behind clones and point-in-time restore: source parsing,
record remapping, the history window's base, what a removed origin keeps."""
from __future__ import annotations

import pytest

from fsd.backup.clones import Source, parse_source, remap
from fsd.backup.history import format_ns, parse_moment
from fsd.format import keys
from fsd.lifecycle.removal import held_keys
from fsd.meta.records import BLOCK, DENT, INODE
from fsd.meta.state import BlockRef, MetaState, own_refs
from fsd.store.base import ObjectInfo
from fsd.volume.retention import Roots, Writers, history_base, plan

NOW = 1_800_000_000 * 10**9
H = b"h" * 32


def test_sources_are_told_apart():
    assert parse_source("db@nightly", NOW) == Source("db", snap="nightly", text="db@nightly")
    assert parse_source("db", NOW) == Source("db", text="db")
    assert parse_source("db@-15m", NOW).at_ns == NOW - 15 * 60 * 10**9
    at = parse_source("db@2026-11-29T10:15:00Z", NOW).at_ns
    assert at is not None and format_ns(at) == "2026-11-29T10:15:00.000Z"
    assert parse_moment("2026-11-29T11:15:00+01:00", NOW) == at
    for bad, msg in [("db@", "say what"), ("db@10:15", "not a moment"), ("db@2026-11-29T10:15:00", "not a moment"),
                     ("-x@s", "must not start"), ("db@-3w", "not a moment"), ("db@a/b", "snapshot name")]:
        with pytest.raises(ValueError, match=msg):
            parse_source(bad, NOW)


def test_remap_shifts_every_block_to_the_origins_roots_and_leaves_the_rest():
    recs = [[INODE, 2, 0o100644, 0, 0, 1, 10, 0, 0, 0, 0, None], [DENT, 1, b"f", 2, 1],
            [BLOCK, 2, 0, H, 10], [BLOCK, 2, 1, H, 10, 5], [BLOCK, 2, 2, H, 10, 5, 2]]
    out = remap(recs, 1)
    assert out[:2] == recs[:2]
    assert [r[5:] for r in out[2:]] == [[0, 1], [5, 1], [5, 3]]
    assert recs[2] == [BLOCK, 2, 0, H, 10]           # the input is not modified
    s = MetaState.from_records(1 << 20, out)
    assert s.blocks[2][0] == BlockRef(H, 10, 0, 1)
    assert own_refs(s) == set()                       # nothing under the clone's own root yet
    assert s.blocks[2][2].record(2, 2) == [BLOCK, 2, 2, H, 10, 5, 3]


def test_truncate_keeps_a_shared_blocks_origin():
    s = MetaState.from_records(1 << 20, [[INODE, 2, 0o100644, 0, 0, 1, 10, 0, 0, 0, 0, None],
                                         [BLOCK, 2, 0, H, 10, 4, 1]])
    s.apply([6, 2, 5])          # TRUNC to 5 bytes
    assert s.blocks[2][0] == BlockRef(H, 5, 4, 1)


def test_history_base_is_the_newest_snapshot_before_the_windows_first_state():
    mt = {(1, 1): 10, (1, 2): 20, (2, 1): 30, (2, 2): 40, (2, 3): 50}
    snaps = [(1, 1), (2, 1), (2, 3)]
    assert history_base(mt, snaps, 5) == (0, 0)          # everything is inside the window
    assert history_base(mt, snaps, 35) == (2, 1)         # the window starts with (2, 1)'s state
    assert history_base(mt, snaps, 25) == (1, 1)         # ... with (1, 2)'s: replay from (1, 1)
    assert history_base(mt, snaps, 99) == (2, 3)
    assert history_base(mt, [(2, 3)], 35) == (0, 0)      # no snapshot before it: keep all that is left


def _info(key: str) -> ObjectInfo:
    return ObjectInfo(key, 1, 0)


def test_plan_keeps_journal_and_snapshots_from_the_history_base():
    root = "v/" + "a" * 32
    objs = [_info(keys.journal_key(root, 1, s)) for s in range(1, 6)]
    objs += [_info(keys.snapshot_key(root, 1, 2)), _info(keys.snapshot_key(root, 1, 4))]
    w = Writers(sealed=frozenset({1}))
    without = plan(root, objs, Roots(base=(1, 4), marked=frozenset()), w, now_ns=NOW, grace_ns=0)
    assert {d.key for d in without.delete} == {keys.journal_key(root, 1, s) for s in (1, 2, 3)} | {
        keys.snapshot_key(root, 1, 2)}
    within = plan(root, objs, Roots(base=(1, 4), marked=frozenset(), history=(1, 2)), w, now_ns=NOW, grace_ns=0)
    assert {d.key for d in within.delete} == {keys.journal_key(root, 1, 1)}


def test_a_removed_origin_keeps_what_its_clones_share_and_nothing_else():
    root = "o/" + "b" * 32
    shared, other = (b"s" * 32, 3), (b"o" * 32, 3)
    found = [keys.superblock_key(root), keys.epoch_key(root, 3), keys.epoch_key(root, 4),
             keys.journal_key(root, 3, 1), keys.journal_key(root, 3, 2), keys.snapshot_key(root, 3, 1),
             keys.snapshot_key(root, 3, 2), keys.data_key(root, *shared), keys.data_key(root, *other),
             keys.pin_key(root, "snap", "nightly"), keys.pin_key(root, "clone", "c" * 32), keys.gc_report_key(root)]
    keep = held_keys(root, found, {(3, 1)}, {shared})
    assert keep == {keys.superblock_key(root), keys.epoch_key(root, 3), keys.epoch_key(root, 4),
                    keys.journal_key(root, 3, 2), keys.snapshot_key(root, 3, 1), keys.data_key(root, *shared),
                    keys.pin_key(root, "clone", "c" * 32)}
