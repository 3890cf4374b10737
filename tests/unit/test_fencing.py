"""Pure fencing rules: where seals go, what replay reads, who may mount."""
import pytest

from fsd import fencing


@pytest.mark.parametrize("seqs,gap", [([], 1), ([1], 2), ([1, 2, 3], 4), ([2, 3], 1), ([1, 3], 2)])
def test_first_gap(seqs, gap):
    assert fencing.first_gap(seqs) == gap


def test_replay_stops_at_seal_and_ignores_later_objects():
    kinds = {1: "begin", 2: "segment", 3: "seal", 4: "segment"}
    assert fencing.replayable_prefix(kinds) == ([1, 2], 3)


def test_replay_stops_at_hole():
    assert fencing.replayable_prefix({1: "begin", 2: "segment", 4: "segment"}) == ([1, 2], None)


def _decide(**kw):
    base = dict(volume="v", latest_epoch=3, latest_sealed=False, latest_host="a",
                latest_token="t-old", cache_tokens=(), takeover=False)
    base.update(kw)
    return fencing.decide_mount(**base)


def test_clean_release_needs_no_takeover():
    d = _decide(latest_sealed=True)
    assert d.allowed and not d.needs_seal


def test_fresh_volume_allowed():
    assert _decide(latest_epoch=0).allowed


def test_unclean_needs_takeover_and_says_so():
    d = _decide()
    assert not d.allowed
    assert "--takeover" in d.reason and "host a" in d.reason


def test_takeover_seals():
    d = _decide(takeover=True)
    assert d.allowed and d.needs_seal


def test_own_crashed_mount_recovers_without_takeover():
    d = _decide(cache_tokens=("t-old",))
    assert d.allowed and d.needs_seal


def test_other_cache_token_is_not_ours():
    assert not _decide(cache_tokens=("t-other",)).allowed


def test_writer_position_is_strictly_consecutive():
    p = fencing.WriterPosition(epoch=2, next_seq=2)
    p.committed(2)
    assert p.next_seq == 3
    with pytest.raises(AssertionError):
        p.committed(5)
