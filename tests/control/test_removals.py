"""Removal jobs at the control service (control/removals.py) as tables of events."""
from __future__ import annotations

import pytest

from control import leases as L
from control import removals as R
from control.leases import Cluster, Config, Refused, RemovalProgress, VolumeReport

TTL = 10.0


def fresh(*hosts: str) -> Cluster:
    c = Cluster(config=Config(ttl=TTL, heartbeat=2.0))
    for h in hosts:
        c.apply(L.register_host(c, h, f"{h}:1", "t", now=0.0, wall=1000.0))
    c.apply(L.create_volume(c, "v", {}, {}, wall=1000.0))
    return c


def apply(c: Cluster, d: L.Decision):
    c.apply(d)
    return d.result


def test_refused_while_a_live_host_holds_the_lease_even_idle():
    c = fresh("a", "b")
    apply(c, L.acquire(c, "v", "a", 1.0))
    with pytest.raises(Refused) as e:
        R.request_removal(c, "v", "b", 2.0)
    assert e.value.code == "busy" and "'a'" in e.value.message
    apply(c, L.release(c, "v", "a", None, 3.0))
    assert apply(c, R.request_removal(c, "v", "b", 3.0)) == {"status": "removing", "host": "b"}


def test_holder_expired_allows_removal_by_the_requester():
    c = fresh("a", "b")
    apply(c, L.acquire(c, "v", "a", 0.0))
    apply(c, L.heartbeat(c, "b", [], TTL + 1))
    assert apply(c, R.request_removal(c, "v", "b", TTL + 1))["host"] == "b"


def test_cli_request_goes_to_a_live_host_or_waits_for_one():
    c = fresh("a")
    assert apply(c, R.request_removal(c, "v", None, TTL * 3)) == {"status": "removing", "host": None}
    assert c.volumes["v"].removing == ""
    apply(c, L.heartbeat(c, "a", [], TTL * 3))
    assert apply(c, R.claim_jobs(c, "a", TTL * 3)) == [{"name": "v", "root": None}]
    assert c.volumes["v"].removing == "a"


def test_while_removing_no_lease_and_no_re_create():
    c = fresh("a")
    apply(c, R.request_removal(c, "v", "a", 1.0))
    with pytest.raises(Refused) as e:
        L.acquire(c, "v", "a", 1.0)
    assert e.value.code == "conflict"
    with pytest.raises(Refused) as e:
        L.create_volume(c, "v", {}, {}, 1000.0)
    assert e.value.code == "exists" and "being removed" in e.value.message


def test_marked_frees_the_name_and_records_the_job():
    c = fresh("a", "b")
    apply(c, L.acquire(c, "v", "a", 0.0))
    apply(c, L.release(c, "v", "a", None, 0.5))
    apply(c, R.request_removal(c, "v", "a", 1.0))
    with pytest.raises(Refused) as e:
        R.removal_marked(c, "v", "b", "v/u1", 5000.0)     # not b's job
    assert e.value.code == "conflict"
    apply(c, R.removal_marked(c, "v", "a", "v/u1", 5000.0))
    assert "v" not in c.volumes and "v" not in c.leases
    assert c.removals["v/u1"].host == "a"
    apply(c, L.create_volume(c, "v", {}, {}, 5001.0))
    apply(c, R.request_removal(c, "v", "a", 2.0))
    apply(c, R.removal_marked(c, "v", "a", "v/u2", 5002.0))
    assert sorted(c.removals) == ["v/u1", "v/u2"]           # two incarnations deleted at once
    assert apply(c, R.claim_jobs(c, "a", 2.0)) == [{"name": "v", "root": "v/u1"}, {"name": "v", "root": "v/u2"}]
    assert apply(c, R.claim_jobs(c, "b", 2.0)) == []


def test_never_formatted_volume_leaves_no_job():
    c = fresh("a")
    apply(c, R.request_removal(c, "v", "a", 1.0))
    assert apply(c, R.removal_marked(c, "v", "a", "", 1000.0)) == {"root": None}
    assert not c.removals and "v" not in c.volumes


def test_jobs_of_a_dead_host_move_to_a_live_one():
    c = fresh("a", "b")
    apply(c, R.request_removal(c, "v", "a", 1.0))
    apply(c, R.removal_marked(c, "v", "a", "v/u1", 1000.0))
    assert apply(c, R.claim_jobs(c, "b", 2.0)) == []                  # a is alive: its job
    apply(c, L.heartbeat(c, "b", [], TTL + 1))
    assert apply(c, R.claim_jobs(c, "b", TTL + 1)) == [{"name": "v", "root": "v/u1"}]
    assert c.removals["v/u1"].host == "b"


def test_progress_only_from_the_job_host_and_done_is_idempotent():
    c = fresh("a", "b")
    apply(c, R.request_removal(c, "v", "a", 1.0))
    apply(c, R.removal_marked(c, "v", "a", "v/u1", 1000.0))
    apply(c, L.heartbeat(c, "b", [], 2.0, [RemovalProgress("v/u1", 9, 9, 9)]))
    assert "v/u1" not in c.removal_progress
    apply(c, L.heartbeat(c, "a", [VolumeReport("x", False, None, None)], 2.0, [RemovalProgress("v/u1", 4, 9, 40)]))
    view = L.status_view(c, 2.0)["removals"][0]
    assert (view["deleted"], view["total"], view["bytes"], view["alive"]) == (4, 9, 40, True)
    assert apply(c, R.removal_done(c, "v/u1", "a")) == {"done": True}
    assert apply(c, R.removal_done(c, "v/u1", "a")) == {"done": False}
    assert not c.removals and not c.removal_progress


def test_aborted_by_the_host_leaves_the_volume_as_it_was():
    c = fresh("a")
    apply(c, R.request_removal(c, "v", "a", 1.0))
    apply(c, R.removal_aborted(c, "v", "a"))
    assert c.volumes["v"].removing is None
    assert apply(c, L.acquire(c, "v", "a", 2.0))["status"] == "granted"


def test_snapshot_jobs_go_to_the_holder_and_answers_update_the_volume():
    from control import snapshots as S
    c = fresh("a", "b")
    apply(c, L.acquire(c, "v", "b", 1.0))
    r = apply(c, S.request(c, "v", "s1", S.CREATE, 1.0))
    assert r["host"] == "b" and S.jobs_for(c, "b")[0]["snap"] == "s1" and S.jobs_for(c, "a") == []
    with pytest.raises(Refused) as e:
        S.request(c, "v", "s1", S.CREATE, 1.0)                   # one job per snapshot at a time
    assert e.value.code == "conflict"
    assert apply(c, S.done(c, "v", "s1", "a", r["seq"], None, [2, 5], 1000.0)) == {"recorded": False}  # not a's
    assert apply(c, S.done(c, "v", "s1", "b", r["seq"], None, [2, 5], 1000.0)) == {"recorded": True}
    assert c.volumes["v"].snapshots == {"s1": {"position": [2, 5], "created": 1000.0}}
    with pytest.raises(Refused) as e:
        S.request(c, "v", "s1", S.CREATE, 2.0)
    assert e.value.code == "exists"
    apply(c, L.release(c, "v", "b", None, 2.0))
    r = apply(c, S.request(c, "v", "s1", S.REMOVE, 2.0))          # unmounted: any live host
    assert r["host"] == "a"
    apply(c, S.done(c, "v", "s1", "a", r["seq"], "store unreachable", None, 1001.0))
    assert "s1" in c.volumes["v"].snapshots                       # a failed removal changes nothing
    with pytest.raises(Refused) as e:
        S.request(c, "v", "bad/name", S.CREATE, 2.0)
    assert e.value.code == "bad_request"
    with pytest.raises(Refused) as e:
        S.request(c, "v", "nope", S.REMOVE, 2.0)
    assert e.value.code == "not_found"
