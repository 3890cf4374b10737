"""GC's pure rules (fsd.volume.retention): each test breaks one safety rule's
precondition and checks the plan keeps the object."""
from __future__ import annotations

from fsd.format import keys
from fsd.lifecycle.removal import deletion_phases
from fsd.store.base import ObjectInfo
from fsd.volume.retention import DATA, SEGMENT, SNAPSHOT, Roots, Writers, plan, sealed_epochs

ROOT = "v/" + "ab" * 16
H1, H2, H3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
NOW = 10**18
OLD = NOW - 10 * 3600 * 10**9


def _o(key: str, size: int = 10, mtime: int = OLD) -> ObjectInfo:
    return ObjectInfo(key, size, mtime)


def _journal(e: int, seqs) -> list[ObjectInfo]:
    return [_o(keys.journal_key(ROOT, e, s)) for s in seqs]


def _keys(p, kind=None):
    return {d.key for d in p.delete if kind is None or d.kind == kind}


def test_segments_before_the_base_go_except_each_epochs_last_key():
    objs = _journal(1, range(1, 6)) + _journal(2, range(1, 8)) + [_o(keys.snapshot_key(ROOT, 1, 3)),
                                                                  _o(keys.snapshot_key(ROOT, 2, 4))]
    p = plan(ROOT, objs, Roots(base=(2, 4), marked=frozenset()), Writers(sealed=frozenset({1})),
             now_ns=NOW, grace_ns=0)
    gone = _keys(p, SEGMENT)
    assert gone == {keys.journal_key(ROOT, 1, s) for s in range(1, 5)} | {
        keys.journal_key(ROOT, 2, s) for s in range(1, 4)}
    assert keys.journal_key(ROOT, 1, 5) not in gone           # epoch 1's seal stays
    assert keys.journal_key(ROOT, 2, 4) not in gone           # the base's own segment stays
    assert _keys(p, SNAPSHOT) == {keys.snapshot_key(ROOT, 1, 3)}


def test_pinned_snapshots_survive():
    objs = [_o(keys.snapshot_key(ROOT, 1, 3)), _o(keys.snapshot_key(ROOT, 2, 4))]
    p = plan(ROOT, objs, Roots(base=(2, 4), marked=frozenset(), pinned_snapshots=frozenset({(1, 3)})),
             Writers(sealed=frozenset({1})), now_ns=NOW, grace_ns=0)
    assert not p.delete


def test_data_rules_mark_seal_grace_and_owner():
    d = lambda h, e: keys.data_key(ROOT, h, e)  # noqa: E731
    objs = [_o(d(H1, 1)), _o(d(H2, 1)), _o(d(H3, 1), mtime=NOW - 10**9),   # epoch 1: sealed
            _o(d(H1, 2)), _o(d(H2, 2)),                                   # epoch 2: the live owner's
            _o(d(H1, 0))]                                                 # format 1, untagged
    roots = Roots(base=(2, 4), marked=frozenset({(H1, 1)}))
    p = plan(ROOT, objs, roots, Writers(sealed=frozenset({1})), now_ns=NOW, grace_ns=3600 * 10**9)
    assert _keys(p, DATA) == {d(H2, 1)}          # referenced, young, unsealed and untagged all kept
    assert p.kept_young == 1 and p.kept_unsealed == 3 and p.live_objects == 1
    p = plan(ROOT, objs, roots, Writers(sealed=frozenset({1}), untagged_collectable=True, own_epoch=2,
                                        protected=frozenset({H2})), now_ns=NOW, grace_ns=3600 * 10**9)
    assert _keys(p, DATA) == {d(H2, 1), d(H1, 2), d(H1, 0)}       # own epoch: all but the protected hash


def test_data_goes_after_the_metadata_it_was_folded_from():
    objs = _journal(1, range(1, 4)) + [_o(keys.data_key(ROOT, H2, 1))]
    p = plan(ROOT, objs, Roots(base=(1, 2), marked=frozenset()), Writers(sealed=frozenset({1})),
             now_ns=NOW, grace_ns=0)
    assert [x.kind for x in p.delete] == [SEGMENT, DATA]


def test_sealed_epochs_below_horizon_or_with_a_seal():
    assert sealed_epochs({3: "seal", 4: "segment"}, [1, 2, 3, 4], horizon=3) == frozenset({1, 2, 3})


def test_removal_deletes_seals_and_the_removal_claim_last():
    found = [keys.superblock_key(ROOT), keys.epoch_key(ROOT, 1), keys.epoch_key(ROOT, 2),
             keys.epoch_key(ROOT, 3), keys.snapshot_key(ROOT, 2, 2), keys.data_key(ROOT, H1, 2)]
    found += [keys.journal_key(ROOT, 1, s) for s in (1, 2)] + [keys.journal_key(ROOT, 2, s) for s in (1, 2, 3)]
    phases = deletion_phases(ROOT, found)
    assert phases[-1] == [keys.epoch_key(ROOT, 3)]                       # the removal claim
    assert set(phases[-2]) == {keys.superblock_key(ROOT), keys.epoch_key(ROOT, 1), keys.epoch_key(ROOT, 2)}
    assert set(phases[-3]) == {keys.journal_key(ROOT, 1, 2), keys.journal_key(ROOT, 2, 3)}   # the seals
    assert sorted(k for p in phases for k in p) == sorted(found)


def test_pins_keep_their_snapshot_and_a_pending_pin_defers_data_and_snapshots():
    from fsd.format.pin import PENDING, PENDING_TIMEOUT_NS, READY, Pin
    from fsd.volume.retention import pin_roots
    pins = {"k1": Pin("snap", "a", READY, (1, 3), NOW), "k2": Pin("snap", "b", PENDING, (2, 2), NOW - 10**9),
            "k3": Pin("snap", "c", PENDING, (2, 1), NOW - PENDING_TIMEOUT_NS - 1)}
    pr = pin_roots(pins, NOW)
    assert pr.pinned == {(1, 3)} and pr.deferred and pr.abandoned == ("k3",)
    assert not pin_roots({"k3": pins["k3"]}, NOW).deferred          # an abandoned pin defers nothing
    objs = (_journal(1, range(1, 6)) + [_o(keys.snapshot_key(ROOT, 1, 3)), _o(keys.snapshot_key(ROOT, 1, 4)),
                                         _o(keys.data_key(ROOT, H1, 1))])
    roots = Roots(base=(1, 5), marked=frozenset(), pinned_snapshots=pr.pinned)
    p = plan(ROOT, objs, roots, Writers(sealed=frozenset({1})), now_ns=NOW, grace_ns=0)
    assert _keys(p, SNAPSHOT) == {keys.snapshot_key(ROOT, 1, 4)}      # the pinned one stays
    assert _keys(p, DATA) == {keys.data_key(ROOT, H1, 1)}
    deferred = Roots(base=(1, 5), marked=frozenset(), pinned_snapshots=pr.pinned, deferred=True)
    p = plan(ROOT, objs, deferred, Writers(sealed=frozenset({1})), now_ns=NOW, grace_ns=0)
    assert not _keys(p, SNAPSHOT) and not _keys(p, DATA) and p.kept_deferred == 1
    assert _keys(p, SEGMENT)                                           # segments may still go
