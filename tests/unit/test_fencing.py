"""Pure fencing rules: where seals go, what replay reads, who may mount."""
import pytest

from fsd.volume import fencing


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


@pytest.mark.parametrize("seqs,run", [([], (1, 1)), ([1, 2, 3], (1, 4)), ([5, 6, 7], (5, 8)), ([9], (9, 10))])
def test_journal_run_starts_at_the_first_key_left_by_gc(seqs, run):
    assert fencing.journal_run(seqs) == run


def test_chain_breaks_when_gc_compacted_past_the_start():
    seqs = {1: [9], 2: [40, 41, 42], 3: [1, 2]}          # GC kept epoch 1's seal and 2 from its snapshot on
    claimed = [1, 2, 3]
    assert fencing.chain_breaks((2, 40), seqs, claimed, 3) is None
    assert fencing.chain_breaks((2, 41), seqs, claimed, 3) is None
    assert "epoch 2 starts at segment 40" in fencing.chain_breaks((2, 10), seqs, claimed, 3)
    assert "epoch 1 starts at segment 9" in fencing.chain_breaks((0, 0), seqs, claimed, 3)
    assert "epoch 1 starts at segment 9" in fencing.chain_breaks((1, 3), seqs, claimed, 3)


def test_chain_allows_an_unbegun_newest_epoch_but_not_a_vanished_middle_one():
    assert fencing.chain_breaks((1, 2), {1: [1, 2, 3]}, [1, 2], 2) is None      # 2 claimed, not begun yet
    assert "epoch 2 has no journal" in fencing.chain_breaks((1, 2), {1: [1, 2, 3], 3: [1]}, [1, 2, 3], 3)


def test_no_mount_after_a_removal_claim():
    d = fencing.decide_mount(volume="v", latest_epoch=4, latest_sealed=False, latest_host="h", latest_token="t",
                             cache_tokens=("t",), takeover=True, latest_purpose="remove")
    assert not d.allowed and "being removed" in d.reason
