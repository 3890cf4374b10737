"""Pure cache accounting: LRU eviction order, pins, dirty budget."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.datapath.cache.policy import CachePolicy, DirtyBudget


def H(i: int) -> bytes:
    return i.to_bytes(32, "big")


def test_lru_order_and_touch():
    p = CachePolicy(300)
    for i in range(3):
        p.add(H(i), 100)
    assert p.used == 300 and len(p) == 3
    assert p.evict_candidates(100) == [H(0)]
    p.touch(H(0))
    assert p.evict_candidates(100) == [H(1)]
    assert p.evict_candidates(150) == [H(1), H(2)]
    assert p.evict_candidates(0) == []
    assert list(p) == [H(1), H(2), H(0)]


def test_evict_candidates_does_not_remove():
    p = CachePolicy(100)
    p.add(H(1), 100)
    assert p.evict_candidates(50) == [H(1)]
    assert H(1) in p and p.used == 100


def test_pinned_never_offered_and_counted_in_used():
    p = CachePolicy(300)
    for i in range(3):
        p.add(H(i), 100)
    p.pin(H(0))
    assert p.used == 300
    assert p.evict_candidates(100) == [H(1)]
    # impossible: returns every unpinned block, the caller decides
    assert p.evict_candidates(1000) == [H(1), H(2)]
    p.unpin(H(0))
    assert p.evict_candidates(100) == [H(0)]


def test_pins_are_counted():
    p = CachePolicy(100)
    p.add(H(1), 100)
    p.pin(H(1))
    p.pin(H(1))
    p.unpin(H(1))
    assert p.is_pinned(H(1)) and p.evict_candidates(1) == []
    p.unpin(H(1))
    assert not p.is_pinned(H(1)) and p.evict_candidates(1) == [H(1)]
    p.unpin(H(1))   # extra unpin: harmless
    assert p.evict_candidates(1) == [H(1)]


def test_pin_unknown_is_an_error():
    with pytest.raises(KeyError):
        CachePolicy(1).pin(H(9))


def test_add_again_updates_size_and_recency():
    p = CachePolicy(1000)
    p.add(H(1), 100)
    p.add(H(2), 100)
    p.add(H(1), 300)
    assert p.used == 400 and p.size_of(H(1)) == 300
    assert list(p) == [H(2), H(1)]


def test_remove_forgets_size_and_pins():
    p = CachePolicy(1000)
    p.add(H(1), 100)
    p.pin(H(1))
    p.remove(H(1))
    p.remove(H(1))   # unknown: ignored
    assert p.used == 0 and H(1) not in p and not p.is_pinned(H(1))
    p.touch(H(1))    # unknown: ignored
    assert len(p) == 0


def test_fits_and_capacity_zero():
    p = CachePolicy(0)
    assert p.fits(0) and not p.fits(1)
    p.add(H(1), 10)
    assert p.evict_candidates(0) == [H(1)]
    with pytest.raises(ValueError):
        CachePolicy(-1)
    with pytest.raises(ValueError):
        p.add(H(2), -1)


@given(st.lists(st.tuples(st.sampled_from(["add", "touch", "pin", "unpin", "remove"]),
                          st.integers(0, 7), st.integers(0, 200)), max_size=60),
       st.integers(0, 2000))
def test_model(ops, incoming):
    """Against a plain model: used is the sum of sizes, candidates are the
    oldest unpinned blocks and just enough of them."""
    p = CachePolicy(500)
    order: list[int] = []
    sizes: dict[int, int] = {}
    pins: dict[int, int] = {}
    for op, i, size in ops:
        if op == "add":
            p.add(H(i), size)
            if i in order:
                order.remove(i)
            order.append(i)
            sizes[i] = size
        elif op == "touch":
            p.touch(H(i))
            if i in order:
                order.remove(i)
                order.append(i)
        elif op == "pin" and i in sizes:
            p.pin(H(i))
            pins[i] = pins.get(i, 0) + 1
        elif op == "unpin":
            p.unpin(H(i))
            if pins.get(i, 0) > 1:
                pins[i] -= 1
            else:
                pins.pop(i, None)
        elif op == "remove":
            p.remove(H(i))
            if i in order:
                order.remove(i)
                sizes.pop(i)
                pins.pop(i, None)
    assert p.used == sum(sizes.values())
    cands = p.evict_candidates(incoming)
    unpinned = [H(i) for i in order if i not in pins]
    assert cands == unpinned[:len(cands)]
    freed = sum(p.size_of(h) for h in cands)
    if p.used - freed + incoming > 500:
        assert cands == unpinned            # impossible: everything it can
    elif cands:
        assert p.used - (freed - p.size_of(cands[-1])) + incoming > 500   # and not one more than needed


def test_dirty_budget():
    b = DirtyBudget(100)
    assert b.dirty == 0 and b.can_admit(100) and b.can_admit(500)   # oversized but alone: admitted
    b.add(60)
    assert b.can_admit(40) and not b.can_admit(41)
    b.add(40)
    assert b.dirty == 100 and not b.can_admit(1) and b.can_admit(0)
    b.release(100)
    assert b.dirty == 0
    with pytest.raises(ValueError, match="accounting bug"):
        b.release(1)
    with pytest.raises(ValueError):
        b.add(-1)
    with pytest.raises(ValueError):
        b.release(-1)
    with pytest.raises(ValueError):
        DirtyBudget(0)
