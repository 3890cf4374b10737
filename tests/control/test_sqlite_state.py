"""SQLite state store: compare-and-swap, transactions all-or-nothing, durability across reopen."""
from __future__ import annotations

import pytest

from control.sqlite_state import SqliteState
from control.state import ANY, NEW, CasConflict, Op, open_state


@pytest.fixture
def st(tmp_path):
    s = SqliteState(tmp_path / "c.db")
    yield s
    s.close()


def test_cas_create_update_delete(st):
    assert st.get("k") is None
    r1 = st.cas("k", None, {"a": 1})
    assert st.get("k") == ({"a": 1}, r1)
    with pytest.raises(CasConflict):
        st.cas("k", None, {"a": 2})              # exists already
    with pytest.raises(CasConflict):
        st.cas("k", r1 + 100, {"a": 2})          # stale revision
    assert st.get("k") == ({"a": 1}, r1)
    r2 = st.cas("k", r1, {"a": 2})
    assert r2 > r1
    with pytest.raises(CasConflict):
        st.delete("k", r1)
    st.delete("k", r2)
    assert st.get("k") is None
    r3 = st.cas("k", None, "again")
    assert r3 > r2                               # revisions are never reused


def test_txn_all_or_nothing(st):
    ra = st.cas("a", None, 1)
    with pytest.raises(CasConflict) as e:
        st.txn([Op("b", NEW, 2), Op("a", ra + 5, 3)])
    assert e.value.key == "a"
    assert st.get("b") is None and st.get("a") == (1, ra)
    revs = st.txn([Op("b", NEW, 2), Op("a", ra, 3), Op("c", ANY, 4)])
    assert st.get("a")[0] == 3 and st.get("b")[0] == 2 and st.get("c")[0] == 4
    assert len(set(revs.values())) == 3


def test_list_prefix_sorted(st):
    for k in ("volumes/b", "volumes/a", "hosts/x", "volumesX"):
        st.cas(k, None, k)
    assert [k for k, _, _ in st.list("volumes/")] == ["volumes/a", "volumes/b"]


def test_survives_reopen(tmp_path):
    s = SqliteState(tmp_path / "c.db")
    r = s.cas("k", None, {"x": [1, 2]})
    s.close()
    s2 = open_state(f"sqlite:{tmp_path / 'c.db'}")
    assert s2.get("k") == ({"x": [1, 2]}, r)
    s2.close()


def test_open_state_urls(tmp_path):
    for bad in ("etcd://h:1", "mysql://x", "sqlite:"):
        with pytest.raises(ValueError):
            open_state(bad)
