"""`ferry volume resize` at the control service (control/resize.py), as
tables of events: what is refused records nothing, a volume nobody holds is
recorded at once, a held one only when its holder reports success."""
from __future__ import annotations

import pytest

from control import leases as L
from control import resize as R
from control import snapshots as S
from control.leases import Cluster, Config, Refused

WALL = 1_800_000_000.0
BLOCK = {"layout": "block", "fs": "xfs", "size": "320M"}


def fresh(*hosts: str) -> Cluster:
    c = Cluster(config=Config(ttl=10.0, heartbeat=2.0))
    for h in hosts:
        c.apply(L.register_host(c, h, f"{h}:1", "t", now=0.0, wall=WALL))
    c.apply(L.create_volume(c, "blk", dict(BLOCK), {}, wall=WALL))
    c.apply(L.create_volume(c, "plain", {}, {}, wall=WALL))
    return c


def apply(c: Cluster, d: L.Decision):
    c.apply(d)
    return d.result


@pytest.mark.parametrize("volume,size,code,words", [
    ("ghost", "1G", "not_found", "'ghost' does not exist"),
    ("plain", "1G", "bad_request", "layout=files"),
    ("blk", "lots", "bad_request", "not a size"),
    ("blk", "100M", "bad_request", "only grow, not shrink"),
    ("blk", "2P", "bad_request", "between 64M and 1P"),
])
def test_refusals_record_nothing(volume, size, code, words):
    c = fresh("a")
    before = {n: v.options for n, v in c.volumes.items()}
    with pytest.raises(Refused) as e:
        R.request(c, volume, size, 1.0)
    assert e.value.code == code and words in e.value.message, e.value.message
    assert {n: v.options for n, v in c.volumes.items()} == before and not c.snap_jobs


def test_without_a_live_holder_the_size_is_recorded_for_the_next_mount():
    c = fresh("a")
    assert apply(c, R.request(c, "blk", "1G", 1.0)) == {"status": "recorded", "size": 1 << 30}
    assert c.volumes["blk"].options == {**BLOCK, "size": str(1 << 30)} and not c.snap_jobs
    assert apply(c, R.request(c, "blk", "1G", 1.0)) == {"status": "unchanged", "size": 1 << 30}
    apply(c, L.acquire(c, "blk", "a", 1.0))
    assert apply(c, R.request(c, "blk", "2000000001", 100.0))["status"] == "recorded"   # a is dead by now
    assert c.volumes["blk"].options["size"] == str(2000000001 // 4096 * 4096)


def test_a_held_volume_is_recorded_only_when_its_holder_grew_it():
    c = fresh("a", "b")
    apply(c, L.acquire(c, "blk", "b", 1.0))
    r = apply(c, R.request(c, "blk", "640M", 1.0))
    assert r["status"] == "pending" and r["host"] == "b"
    assert S.jobs_for(c, "b") == [{"volume": "blk", "snap": R.JOB_KEY, "op": "resize", "seq": r["seq"],
                                   "options": {"size": str(640 << 20)}}]
    assert S.jobs_for(c, "a") == []
    with pytest.raises(Refused) as e:                    # one resize at a time
        R.request(c, "blk", "1G", 1.0)
    assert e.value.code == "conflict"
    apply(c, S.done(c, "blk", R.JOB_KEY, "b", r["seq"], "the image is 700M; it can only grow", None, WALL))
    assert c.volumes["blk"].options["size"] == "320M" and not c.snap_jobs      # refused there: nothing recorded
    r = apply(c, R.request(c, "blk", "640M", 1.0))
    apply(c, S.done(c, "blk", R.JOB_KEY, "a", r["seq"], None, None, WALL, "grown"))   # not the job's host
    assert c.volumes["blk"].options["size"] == "320M"
    apply(c, S.done(c, "blk", R.JOB_KEY, "b", r["seq"], None, None, WALL, "grown online"))
    assert c.volumes["blk"].options["size"] == str(640 << 20)
    assert c.snap_results[r["seq"]]["note"] == "grown online"


def test_a_clone_of_a_block_volume_resizes_from_its_origins_size():
    c = fresh("a")
    c.apply(L.create_volume(c, "copy", {"from": "blk@s1"}, {}, wall=WALL))
    with pytest.raises(Refused, match="only grow"):
        R.request(c, "copy", "256M", 1.0)
    assert apply(c, R.request(c, "copy", "1G", 1.0))["status"] == "recorded"
    assert c.volumes["copy"].options == {"from": "blk@s1", "size": str(1 << 30)}
    assert c.volumes["blk"].options == BLOCK
    c.apply(L.create_volume(c, "pcopy", {"from": "plain@s1"}, {}, wall=WALL))
    with pytest.raises(Refused, match="layout=files"):
        R.request(c, "pcopy", "1G", 1.0)


def test_a_volume_being_removed_is_not_resized():
    c = fresh("a")
    v = c.volumes["blk"]
    c.apply(L.Decision(put_volumes=[L.Volume(**{**v.__dict__, "removing": "a"})]))
    with pytest.raises(Refused) as e:
        R.request(c, "blk", "1G", 1.0)
    assert e.value.code == "conflict"
