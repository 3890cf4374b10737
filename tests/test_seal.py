"""Sealing an epoch against a real store (file:// and moto): the releasing
owner's one-PUT fast path, and the general path it falls back to."""
from __future__ import annotations

import time

from fsd.format import keys
from fsd.format.segment import Segment
from fsd.volume import objects as vol_mod

VOL = "sealvol"


def _segment(epoch: int, seq: int, kind: str = "segment") -> bytes:
    return Segment(kind=kind, epoch=epoch, seq=seq, created_ns=time.time_ns(), records=[],
                   reason="takeover" if kind == "seal" else None,
                   sealed_by=epoch + 1 if kind == "seal" else None).encode()


def _setup(store) -> int:
    global VOL
    ref, _sb = vol_mod.mkfs(store, "vol", {})
    VOL = ref.root
    epoch, _ = vol_mod.claim_epoch(store, VOL, cache_tokens=(), takeover=False)
    for seq in (2, 3, 4):                       # three commits after the begin segment
        store.put(keys.journal_key(VOL, epoch, seq), _segment(epoch, seq), if_none_match=True)
    return epoch


def test_release_seals_at_the_owners_next_seq(store):
    epoch = _setup(store)
    assert vol_mod.seal_epoch(store, VOL, epoch, sealed_by=epoch, reason="release", next_seq=5) == 5
    seal = vol_mod.read_segment(store, VOL, epoch, 5)
    assert seal.kind == "seal" and seal.reason == "release"
    # the epoch now counts as released: the next mount needs no --takeover
    epoch2, _ = vol_mod.claim_epoch(store, VOL, cache_tokens=(), takeover=False)
    assert epoch2 == epoch + 1


def test_release_after_someone_else_sealed_reports_their_seal(store):
    epoch = _setup(store)
    store.put(keys.journal_key(VOL, epoch, 5), _segment(epoch, 5, kind="seal"), if_none_match=True)
    assert vol_mod.seal_epoch(store, VOL, epoch, sealed_by=epoch, reason="release", next_seq=5) == 5
    assert vol_mod.read_segment(store, VOL, epoch, 5).reason == "takeover"     # theirs, untouched
    assert [k for k in store.list(keys.journal_prefix(VOL, epoch))
            if keys.parse_journal_key(VOL, k) == (epoch, 6)] == []


def test_takeover_seal_finds_the_first_free_seq(store):
    epoch = _setup(store)
    assert vol_mod.seal_epoch(store, VOL, epoch, sealed_by=epoch + 1, reason="takeover") == 5
    # sealing again is a no-op that names the existing seal
    assert vol_mod.seal_epoch(store, VOL, epoch, sealed_by=epoch + 1, reason="takeover") == 5
