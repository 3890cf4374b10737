"""The lease/handoff state machine as tables of events with a fake clock."""
from __future__ import annotations

from typing import Any

import pytest

from control import leases as L
from control.leases import Cluster, Config, Refused, VolumeReport

TTL = 10.0


def fresh(*hosts: str, volumes: tuple[str, ...] = ("v",)) -> Cluster:
    c = Cluster(config=Config(ttl=TTL, heartbeat=2.0))
    for h in hosts:
        c.apply(L.register_host(c, h, f"{h}:1", "t", now=0.0, wall=1000.0))
    for v in volumes:
        c.apply(L.create_volume(c, v, {}, {}, wall=1000.0))
    return c


def run(c: Cluster, events: list[tuple]) -> list[Any]:
    """Apply events (t, op, *args); return each result or the Refused code."""
    out = []
    for t, op, *args in events:
        try:
            if op == "acquire":
                d = L.acquire(c, args[0], args[1], t, *args[2:])
            elif op == "release":
                d = L.release(c, args[0], args[1], args[2] if len(args) > 2 else None, t)
            elif op == "refuse":
                d = L.refuse_move(c, args[0], args[1], t)
            elif op == "hb":
                reps = [VolumeReport(name=n, in_use=u, epoch=e, upload_lag_s=lag) for n, u, e, lag in args[1]]
                d = L.heartbeat(c, args[0], reps, t)
            elif op == "move":
                d = L.request_move(c, args[0], args[1], t, args[2])
            elif op == "expire":
                d = L.expire_moves(c, t)
            else:
                raise AssertionError(op)
        except Refused as e:
            out.append(e.code)
            continue
        c.apply(d)
        out.append(d.result)
    return out


def status(r: Any) -> Any:
    return r["status"] if isinstance(r, dict) and "status" in r else r


def test_grant_and_idempotent_reacquire():
    c = fresh("a")
    r = run(c, [(1, "acquire", "v", "a"), (2, "acquire", "v", "a")])
    assert [status(x) for x in r] == ["granted", "granted"]
    assert r[0]["takeover"] is False and r[1]["takeover"] is False
    assert r[0]["generation"] == r[1]["generation"] == 1
    assert c.leases["v"].host == "a"


def test_busy_when_owner_reports_in_use():
    c = fresh("a", "b")
    r = run(c, [(1, "acquire", "v", "a"), (2, "hb", "a", [("v", True, 7, 0.5)]), (3, "acquire", "v", "b")])
    assert status(r[2]) == "busy" and r[2]["owner"] == "a" and r[2]["epoch"] == 7
    assert c.leases["v"].host == "a" and "v" not in c.moves


def test_pending_then_release_then_granted():
    c = fresh("a", "b")
    r = run(c, [
        (1, "acquire", "v", "a"),
        (2, "hb", "a", [("v", False, 3, 0.0)]),
        (3, "acquire", "v", "b", 5.0),          # pending: move recorded for a
        (4, "hb", "a", [("v", False, 3, 0.0)]),  # a learns of it from its heartbeat
        (5, "release", "v", "a", 3),
        (6, "acquire", "v", "b"),
    ])
    assert status(r[2]) == "pending" and r[2]["owner"] == "a"
    assert r[3]["moves"] == [{"volume": "v", "to": "b"}]
    assert r[4] == {"released": True}
    assert status(r[5]) == "granted" and r[5]["takeover"] is False
    assert r[5]["generation"] == 2 and r[5]["previous_epoch"] == 3
    assert "v" not in c.moves and c.leases["v"].host == "b"


def test_expiry_gives_takeover():
    c = fresh("a", "b")
    r = run(c, [
        (0, "acquire", "v", "a"),
        (5, "hb", "b", []),
        (5 + TTL, "acquire", "v", "b"),          # a heard at 0: 15 - 0 > TTL
    ])
    assert status(r[2]) == "granted" and r[2]["takeover"] is True and r[2]["previous_owner"] == "a"


def test_not_expired_at_exactly_ttl_and_heartbeat_renews():
    c = fresh("a", "b")
    r = run(c, [
        (0, "acquire", "v", "a"),
        (TTL, "acquire", "v", "b"),              # age == TTL: still alive -> pending
        (TTL + 1, "hb", "a", [("v", False, 1, None)]),
        (2 * TTL, "acquire", "v", "b"),          # renewed at TTL+1
    ])
    assert status(r[1]) == "pending"
    assert status(r[3]) == "pending"
    assert c.leases["v"].host == "a"


def test_refuse_makes_move_disappear_and_marks_in_use():
    c = fresh("a", "b")
    r = run(c, [(0, "acquire", "v", "a"), (1, "acquire", "v", "b", 5.0), (2, "refuse", "v", "a"),
                (3, "acquire", "v", "b")])
    assert status(r[1]) == "pending"
    assert r[2] == {"refused": True}
    assert "v" not in c.moves
    assert status(r[3]) == "busy"


def test_only_owner_may_release_or_refuse():
    c = fresh("a", "b")
    r = run(c, [(0, "acquire", "v", "a"), (1, "release", "v", "b"), (1, "refuse", "v", "b"),
                (2, "hb", "a", [("v", False, 4, None)]), (3, "release", "v", "a", 3)])
    assert r[1:3] == ["conflict", "conflict"]
    assert r[4] == "conflict"                   # wrong epoch
    assert c.leases["v"].host == "a"
    # release of a free lease is a harmless no-op
    assert run(c, [(4, "release", "v", "a", 4), (5, "release", "v", "a")]) == [{"released": True},
                                                                            {"released": False}]


def test_a_release_repeated_after_the_next_grant_is_answered_not_refused():
    """The release was written, its answer lost (replica or etcd leader killed), the
    waiting host got the volume, and the old holder asks again: no conflict."""
    c = fresh("a", "b", "x")
    r = run(c, [(0, "acquire", "v", "a"), (1, "hb", "a", [("v", False, 3, 0.0)]),
                (2, "acquire", "v", "b", 5.0), (3, "release", "v", "a", 3), (4, "acquire", "v", "b"),
                (5, "release", "v", "a", 3), (5, "release", "v", "a"),
                (6, "release", "v", "a", 2),            # another epoch: not that release
                (6, "release", "v", "x")])              # never held it
    assert status(r[4]) == "granted" and r[4]["takeover"] is False
    assert r[5:7] == [{"released": False}, {"released": False}]
    assert r[7:9] == ["conflict", "conflict"]
    assert c.leases["v"].host == "b"


def test_a_takeover_forgets_the_last_release():
    """a released, b got the volume and died, x took it over: a's old release is no
    longer a harmless repeat (nothing says the lease x holds came from it)."""
    c = fresh("a", "b", "x")
    r = run(c, [(0, "acquire", "v", "a"), (1, "release", "v", "a"), (2, "acquire", "v", "b"),
                (3, "release", "v", "a"),
                (2 + TTL + 1, "hb", "x", []), (2 + TTL + 1, "acquire", "v", "x"),
                (2 + TTL + 2, "release", "v", "a")])
    assert r[3] == {"released": False}
    assert r[5]["takeover"] is True and r[5]["previous_owner"] == "b"
    assert r[6] == "conflict"
    assert L.Lease.from_dict(c.leases["v"].to_dict()) == c.leases["v"]


def test_second_requester_busy_while_move_pending_and_move_expires():
    c = fresh("a", "b", "x")
    r = run(c, [(0, "acquire", "v", "a"), (0, "hb", "x", []), (1, "acquire", "v", "b", 2.0),
                (2, "acquire", "v", "x")])
    assert status(r[2]) == "pending" and status(r[3]) == "busy"
    exp = c.moves["v"].expires
    assert exp == 1 + 2.0 + TTL
    run(c, [(exp, "hb", "a", []), (exp, "hb", "x", []), (exp, "expire")])
    assert "v" not in c.moves
    assert run(c, [(exp, "hb", "a", [])])[0]["moves"] == []
    assert status(run(c, [(exp + 1, "acquire", "v", "x")])[0]) == "pending"


def test_heartbeat_reports_lost_volumes_and_records_epoch_lag():
    c = fresh("a", "b", volumes=("v", "w"))
    r = run(c, [(0, "acquire", "v", "a"), (0, "acquire", "w", "b"),
                (1, "hb", "a", [("v", True, 9, 1.5), ("w", False, 2, 0.0), ("gone", False, 1, 0.0)])])
    assert r[2]["lost"] == ["gone", "w"] and r[2]["ttl"] == TTL
    assert c.leases["v"].epoch == 9 and c.leases["v"].in_use and c.lags["v"] == 1.5
    assert c.leases["w"].epoch is None              # not b's report: untouched


def test_heartbeat_without_change_writes_nothing_persistent():
    c = fresh("a")
    run(c, [(0, "acquire", "v", "a"), (1, "hb", "a", [("v", False, 1, 0.0)])])
    d = L.heartbeat(c, "a", [VolumeReport("v", False, 1, 0.2)], 2)
    assert not d.persistent and d.heard == {"a": 2}


def test_generation_grows_across_release_and_takeover():
    c = fresh("a", "b")
    gens = [r["generation"] for r in run(c, [
        (0, "acquire", "v", "a"), (1, "release", "v", "a"), (2, "acquire", "v", "b"),
        (2 + TTL + 1, "hb", "a", []), (2 + TTL + 1, "acquire", "v", "a")]) if isinstance(r, dict) and "generation" in r]
    assert gens == [1, 2, 3]


def test_unknown_volume_and_host_refused_and_change_nothing():
    c = fresh("a")
    before = (dict(c.leases), dict(c.moves))
    assert run(c, [(0, "acquire", "nope", "a"), (0, "acquire", "v", "ghost"), (0, "hb", "ghost", [])]) == \
        ["not_found", "not_found", "not_found"]
    assert (dict(c.leases), dict(c.moves)) == before


def test_create_idempotent_and_exists_when_different():
    c = fresh()
    d = L.create_volume(c, "x", {"durability": "local"}, {"a": "b"}, wall=1.0)
    c.apply(d)
    assert L.create_volume(c, "x", {"durability": "local"}, {"a": "b"}, wall=2.0).put_volumes == []
    with pytest.raises(Refused) as e:
        L.create_volume(c, "x", {}, {}, wall=3.0)
    assert e.value.code == "exists"
    with pytest.raises(Refused) as e:
        L.create_volume(c, "y", {}, {"bad key!": "x"}, wall=3.0)
    assert e.value.code == "bad_request"


def test_operator_move_states():
    c = fresh("a", "b")
    r = run(c, [(0, "move", "v", "b", 5.0), (0, "acquire", "v", "a"), (1, "move", "v", "b", 5.0),
                (1, "move", "v", "a", 5.0), (2, "hb", "a", [("v", True, 1, None)])])
    assert status(r[0]) == "free"
    assert status(r[2]) == "pending" and c.moves["v"].to == "b"
    assert status(r[3]) == "done"
    assert status(run(c, [(3, "move", "v", "nohost", 1.0)])[0]) == "not_found"


def test_restart_grace_every_host_counts_as_heard():
    c = fresh("a", "b")
    run(c, [(0, "acquire", "v", "a")])
    c2 = Cluster.loaded(c.config, list(c.volumes.values()), list(c.hosts.values()), list(c.leases.values()),
                        now=500.0)
    assert c2.holder("v", 500.0 + TTL) == "a"
    assert c2.holder("v", 500.0 + TTL + 0.1) is None


def test_bad_config_refused():
    with pytest.raises(ValueError):
        Config(ttl=3, heartbeat=2)
    with pytest.raises(ValueError):
        Config(ttl=0, heartbeat=0)


def test_heartbeat_changes_are_lazy_not_synchronous():
    c = fresh("a")
    run(c, [(0, "acquire", "v", "a")])
    d = L.heartbeat(c, "a", [VolumeReport("v", True, 5, 0.1)], 1)
    assert not d.persistent and [x.epoch for x in d.lazy_leases] == [5]
    c.apply(d)
    assert c.leases["v"].epoch == 5 and c.leases["v"].in_use


def test_a_takeover_asked_again_before_the_new_epoch_is_reported_is_still_a_takeover():
    """The answer to a takeover grant can be lost (a retried etcd write, a replica
    that died before answering): the same acquire again must still say "take over",
    until the new holder reports the epoch it claimed."""
    c = fresh("a", "b")
    r = run(c, [(0.0, "acquire", "v", "a"),
                (0.5, "hb", "a", [("v", True, 4, 0.0)]),
                (20.0, "acquire", "v", "b"),            # a is dead: b takes over
                (20.1, "acquire", "v", "b"),            # asked again, the first answer lost
                (21.0, "hb", "b", [("v", True, 5, 0.0)]),
                (22.0, "acquire", "v", "b")])           # now the takeover is done
    assert r[2]["takeover"] is True and r[2]["previous_owner"] == "a" and r[2]["previous_epoch"] == 4
    assert r[3]["takeover"] is True and r[3]["previous_owner"] == "a" and r[3]["previous_epoch"] == 4
    assert r[3]["generation"] == r[2]["generation"]
    assert r[5]["takeover"] is False and r[5]["epoch"] == 5
