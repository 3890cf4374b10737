"""Clone jobs at the control service (control/snapshots.py) as tables of
events: refused sources record nothing, a success records the volume, a
failure or a give-up records nothing, Swarm's repeated creates are no-ops."""
from __future__ import annotations

import pytest

from control import leases as L
from control import snapshots as S
from control.leases import Cluster, Config, Refused

WALL = 1_800_000_000.0


def fresh(*hosts: str) -> Cluster:
    c = Cluster(config=Config(ttl=10.0, heartbeat=2.0))
    for h in hosts:
        c.apply(L.register_host(c, h, f"{h}:1", "t", now=0.0, wall=WALL))
    c.apply(L.create_volume(c, "orig", {}, {}, wall=WALL))
    v = c.volumes["orig"]
    c.apply(L.Decision(put_volumes=[L.Volume(**{**v.__dict__, "snapshots": {"s1": {"position": [1, 3]}}})]))
    return c


def apply(c: Cluster, d: L.Decision):
    c.apply(d)
    return d.result


@pytest.mark.parametrize("source,code,words", [
    ("ghost@s1", "not_found", "'ghost' does not exist"),
    ("orig@nosuch", "not_found", "no snapshot 'nosuch'"),
    ("orig@", "bad_request", "say what after"),
    ("orig@2999-01-01T00:00:00Z", "bad_request", "in the future"),
])
def test_bad_sources_are_refused_and_record_nothing(source, code, words):
    c = fresh("a")
    with pytest.raises(Refused) as e:
        S.request_clone(c, "copy", source, {"from": source}, {}, 1.0, WALL)
    assert e.value.code == code and words in e.value.message
    assert "copy" not in c.volumes and not c.snap_jobs


def test_the_volume_is_recorded_only_when_the_agent_made_the_clone():
    c = fresh("a", "b")
    apply(c, L.acquire(c, "orig", "b", 1.0))                       # the holder gets the job
    r = apply(c, S.request_clone(c, "copy", "orig@s1", {"from": "orig@s1"}, {"app": "x"}, 1.0, WALL))
    assert r["host"] == "b" and "copy" not in c.volumes
    assert S.jobs_for(c, "b") == [{"volume": "copy", "snap": "orig@s1", "op": "clone", "seq": r["seq"],
                                   "options": {"from": "orig@s1"}}]
    with pytest.raises(Refused) as e:                              # a second create meanwhile
        S.request_clone(c, "copy", "orig@s1", {"from": "orig@s1"}, {}, 1.0, WALL)
    assert e.value.code == "conflict"
    apply(c, S.done(c, "copy", "orig@s1", "b", r["seq"], None, [1, 3], WALL))
    v = c.volumes["copy"]
    assert v.options == {"from": "orig@s1"} and v.labels == {"app": "x"}
    assert apply(c, S.request_clone(c, "copy", "orig@s1", {"from": "orig@s1"}, {"app": "x"}, 2.0, WALL)) == {
        "exists": True}                                            # Swarm: identical create, no-op
    with pytest.raises(Refused):
        S.request_clone(c, "copy", "orig@s1", {"from": "orig@s1", "durability": "local"}, {}, 2.0, WALL)


def test_a_failed_or_abandoned_clone_records_nothing():
    c = fresh("a")
    r = apply(c, S.request_clone(c, "copy", "orig@s1", {"from": "orig@s1"}, {}, 1.0, WALL))
    apply(c, S.done(c, "copy", "orig@s1", "a", r["seq"], "the store said no", None, WALL))
    assert "copy" not in c.volumes and not c.snap_jobs
    r = apply(c, S.request_clone(c, "copy", "orig@-15m", {"from": "orig@-15m"}, {}, 1.0, WALL))
    assert r["source"].startswith("orig@") and r["source"].endswith("Z")     # the moment is fixed now
    apply(c, S.give_up(c, "copy", r["source"], r["seq"]))
    apply(c, S.done(c, "copy", r["source"], "a", r["seq"], None, [1, 3], WALL))   # too late: ignored
    assert "copy" not in c.volumes
