"""The state-store contract (control/state.py), held against both backends:
SQLite and a real etcd (Debian's etcd-server) through its JSON gateway.

Every test runs for `[sqlite]`, `[etcd]` and `[memory]` (the tests'
thread-free store, for MockClock tests); the server is written
against this contract alone, so a backend that passes here can carry it.
"""
from __future__ import annotations

import contextlib
import random
import uuid

import pytest
import trio

from control.etcd_state import EtcdState, parse_etcd_url
from control.sqlite_state import SqliteState
from control.state import ANY, NEW, CasConflict, Compacted, Op
from control.stores import open_state
from tests.helpers.memstate import MemoryState


@pytest.fixture(params=["sqlite", "etcd", "memory"])
async def st(request, tmp_path):
    if request.param == "memory":
        s = MemoryState()               # the tests' thread-free store (tests/helpers/memstate.py)
    elif request.param == "sqlite":
        s = SqliteState(tmp_path / "c.db")
    else:
        cluster = request.getfixturevalue("etcd1")
        s = EtcdState(cluster.endpoints, prefix=f"/t-{uuid.uuid4().hex[:8]}/")
    yield s
    await s.aclose()


async def test_cas_create_update_delete(st):
    assert await st.get("k") is None
    r1 = await st.txn([Op("k", NEW, {"a": 1})])
    assert await st.get("k") == ({"a": 1}, r1)
    with pytest.raises(CasConflict) as e:
        await st.txn([Op("k", NEW, {"a": 2})])              # exists already
    assert e.value.key == "k" and e.value.actual == r1
    with pytest.raises(CasConflict):
        await st.txn([Op("k", r1 + 100, {"a": 2})])         # stale revision
    assert await st.get("k") == ({"a": 1}, r1)
    r2 = await st.txn([Op("k", r1, {"a": 2})])
    assert r2 > r1
    with pytest.raises(CasConflict):
        await st.txn([Op("k", r1, delete=True)])
    await st.txn([Op("k", r2, delete=True)])
    assert await st.get("k") is None
    r3 = await st.txn([Op("k", NEW, "again")])
    assert r3 > r2                                          # revisions are never reused


async def test_txn_all_or_nothing_and_one_revision_per_txn(st):
    ra = await st.txn([Op("a", NEW, 1)])
    with pytest.raises(CasConflict) as e:
        await st.txn([Op("b", NEW, 2), Op("a", ra + 5, 3)])
    assert e.value.key == "a"
    assert await st.get("b") is None and await st.get("a") == (1, ra)
    rev = await st.txn([Op("b", NEW, 2), Op("a", ra, 3), Op("c", ANY, 4)])
    assert [await st.get(k) for k in "abc"] == [(3, rev), (2, rev), (4, rev)]


async def test_check_only_ops_guard_without_writing(st):
    rx = await st.txn([Op("x", NEW, "x")])
    with pytest.raises(CasConflict) as e:
        await st.txn([Op("x", NEW, check=True), Op("y", NEW, "y")])
    assert e.value.key == "x" and await st.get("y") is None
    rev = await st.txn([Op("x", rx, check=True), Op("y", NEW, "y")])
    assert await st.get("x") == ("x", rx) and await st.get("y") == ("y", rev)
    await st.txn([Op("gone", NEW, check=True), Op("z", NEW, 1)])       # NEW matches a missing key


async def test_list_prefix_sorted_with_revision(st, monkeypatch):
    monkeypatch.setattr("control.etcd_state.PAGE", 3)       # etcd pages; all rows still come back
    for k in ("volumes/b", "volumes/a", "hosts/x", "volumesX", "volumes/c", "volumes/e", "volumes/d"):
        last = await st.txn([Op(k, NEW, k)])
    snap = await st.scan("volumes/")
    assert [k for k, _, _ in snap.rows] == ["volumes/a", "volumes/b", "volumes/c", "volumes/d", "volumes/e"]
    assert all(v == k for k, v, _ in snap.rows) and snap.revision == last
    assert (await st.scan("nothing/")).rows == []


async def test_values_round_trip(st):
    value = {"s": "ünï", "b": b"\x00\xff", "n": [1, -2, 2 ** 40, None, True], "f": 0.25, "m": {"x": {}}}
    rev = await st.txn([Op("v", NEW, value)])
    assert await st.get("v") == (value, rev)


async def _take(st, prefix: str, after: int, n: int) -> list:
    out: list = []
    with trio.fail_after(10):
        async with contextlib.aclosing(st.watch(prefix, after)) as events:
            async for batch in events:
                out += batch
                if len(out) >= n:
                    return out
    return out


async def test_watch_replays_history_in_order_then_follows(st):
    base = (await st.scan("")).revision
    r1 = await st.txn([Op("w/a", NEW, 1), Op("w/b", NEW, 2), Op("other", NEW, 0)])
    r2 = await st.txn([Op("w/a", r1, delete=True)])
    got = await _take(st, "w/", base, 3)
    assert [(e.key, e.value, e.revision) for e in got] == [("w/a", 1, r1), ("w/b", 2, r1), ("w/a", None, r2)]
    assert got[2].deleted

    async def later():
        await trio.sleep(0.1)
        await st.txn([Op("w/c", NEW, 3)])
    async with trio.open_nursery() as n:
        n.start_soon(later)
        got = await _take(st, "w/", r2, 1)
    assert [(e.key, e.value) for e in got] == [("w/c", 3)]


async def test_watch_of_forgotten_history_says_compacted(st):
    base = (await st.scan("")).revision
    for i in range(5):
        rev = await st.txn([Op(f"k{i}", NEW, i)])
    if isinstance(st, SqliteState):          # a small in-memory history: the oldest falls out
        st._history = type(st._history)(st._history, maxlen=2)
        await st.txn([Op("k9", NEW, 9)])
        st._oldest = max(st._oldest, st._history[0].revision)
    else:
        await st.compact(rev)
    with pytest.raises(Compacted):
        await _take(st, "", base, 1)


async def test_random_operations_match_a_model(st):
    """Random CAS writes, deletes and checks, some with stale revisions:
    every outcome matches a dict model, and the watch from the start rebuilds
    exactly the final state."""
    rng = random.Random(7)
    base = (await st.scan("")).revision
    model: dict[str, tuple[int, int]] = {}          # key -> (value, revision)
    keys = [f"r/{c}" for c in "abcdef"]
    for step in range(120):
        ops = []
        for key in rng.sample(keys, rng.randint(1, 3)):
            cur = model.get(key)
            expected = rng.choice([cur[1] if cur else NEW, NEW, ANY, (cur[1] if cur else 0) + 7])
            kind = rng.choice(["put", "put", "delete", "check"])
            ops.append(Op(key, expected, step, delete=kind == "delete", check=kind == "check"))
        ok = all(op.expected == ANY or op.expected == (model[op.key][1] if op.key in model else NEW) for op in ops)
        try:
            rev = await st.txn(ops)
        except CasConflict:
            assert not ok, f"step {step}: refused {ops} against {model}"
            continue
        assert ok, f"step {step}: applied {ops} against {model}"
        for op in ops:
            if op.delete:
                model.pop(op.key, None)
            elif not op.check:
                model[op.key] = (op.value, rev)
    snap = await st.scan("r/")
    assert {k: (v, r) for k, v, r in snap.rows} == model
    rebuilt: dict[str, tuple[int, int]] = {}
    async with contextlib.aclosing(st.watch("r/", base)) as events:
        with trio.move_on_after(10):
            async for batch in events:
                for e in batch:
                    if e.deleted:
                        rebuilt.pop(e.key, None)
                    else:
                        rebuilt[e.key] = (e.value, e.revision)
                if max(e.revision for e in batch) >= snap.revision:
                    break
    assert rebuilt == model


def test_open_state_urls(tmp_path):
    for bad in ("mysql://x", "sqlite:", "etcd://", "etcd://h", "etcd://h:port", "etcd://h:99999"):
        with pytest.raises(ValueError):
            open_state(bad)
    assert parse_etcd_url("etcd://a:2379,b:2380") == (["a:2379", "b:2380"], "/ferry/")
    assert parse_etcd_url("etcd://a:2379/site1") == (["a:2379"], "/site1/")


async def test_sqlite_file_serves_one_control_service(tmp_path):
    from control.state import StateError
    s = SqliteState(tmp_path / "c.db")
    with pytest.raises(StateError, match="in use by another control service"):
        SqliteState(tmp_path / "c.db")
    await s.aclose()
    s2 = SqliteState(tmp_path / "c.db")            # free again once closed
    await s2.aclose()


async def test_sqlite_survives_reopen(tmp_path):
    s = SqliteState(tmp_path / "c.db")
    r = await s.txn([Op("k", NEW, {"x": [1, 2]})])
    await s.aclose()
    s2 = open_state(f"sqlite:{tmp_path / 'c.db'}")
    assert await s2.get("k") == ({"x": [1, 2]}, r)
    with pytest.raises(Compacted):                 # history from before the open is not kept
        await _take(s2, "", 0, 1)
    await s2.aclose()
