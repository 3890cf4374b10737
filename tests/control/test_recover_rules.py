"""The rules that rebuild control records from the store (control/recover.py), as tables."""
from __future__ import annotations

import pytest

from control import recover
from control.leases import Cluster, Refused, Volume


def cluster_with(**volumes: Volume) -> Cluster:
    c = Cluster()
    c.volumes.update(volumes)
    return c


SNAP = {"s1": {"position": [3, 9], "created": 10.0}}


def test_an_unknown_volume_is_recorded_as_the_store_says():
    c = Cluster()
    d = recover.recover_volume(c, "v", {"durability": "local"}, 5.0, SNAP, wall=99.0)
    assert d.result == {"status": "recovered"}
    (v,) = d.put_volumes
    assert (v.name, v.options, v.labels, v.created, v.snapshots) == ("v", {"durability": "local"}, {}, 5.0, SNAP)
    c.apply(d)
    again = recover.recover_volume(c, "v", {"durability": "local"}, 5.0, SNAP, wall=100.0)
    assert again.result == {"status": "unchanged"} and not again.persistent


def test_a_known_volume_gains_missing_snapshots_and_keeps_its_own():
    mine = {"s0": {"position": [1, 1], "created": 1.0}}
    c = cluster_with(v=Volume("v", {}, {"app": "db"}, 1.0, snapshots=mine))
    d = recover.recover_volume(c, "v", {}, 0.0, SNAP, wall=5.0)
    assert d.result["status"] == "updated" and d.result["snapshots_added"] == ["s1"]
    (v,) = d.put_volumes
    assert v.snapshots == {**mine, **SNAP} and v.labels == {"app": "db"}


def test_the_same_format_spelled_otherwise_is_the_same_volume():
    mine = Volume("v", {"durability": "local", "compression": "none", "block_size": "1024K"}, {"a": "b"}, 1.0)
    c = cluster_with(v=mine)
    d = recover.recover_volume(c, "v", {}, 0.0, {}, wall=5.0)          # the store omits defaults, mount options
    assert d.result == {"status": "unchanged"} and not d.persistent


@pytest.mark.parametrize("old", [Volume("v", {"compression": "zstd"}, {}, 1.0),
                                 Volume("v", {"layout": "block", "size": "1G"}, {}, 1.0),
                                 Volume("v", {"from": "other@s1"}, {}, 1.0),
                                 Volume("v", {}, {}, 1.0, removing="h1")])
def test_a_different_or_departing_volume_is_left_alone(old):
    c = cluster_with(v=old)
    d = recover.recover_volume(c, "v", {}, 0.0, {}, wall=5.0)
    assert d.result["status"] == "conflict" and d.result["message"] and not d.persistent


def test_a_deletion_in_progress_becomes_a_job_for_any_live_host_once():
    c = Cluster()
    d = recover.recover_removal(c, "v", "v/" + "a" * 32, wall=7.0)
    assert d.result == {"status": "recovered"}
    (r,) = d.put_removals
    assert (r.name, r.host, r.requested) == ("v", "", 7.0)
    c.apply(d)
    assert recover.recover_removal(c, "v", "v/" + "a" * 32, wall=8.0).result == {"status": "unchanged"}


@pytest.mark.parametrize("bad", [[], {"s": {}}, {"s": {"position": [1]}}, {"s": {"position": [-1, 2]}},
                                 {"s": {"position": [True, 2]}}, {"../x": {"position": [1, 2]}}])
def test_malformed_snapshot_maps_are_refused(bad):
    with pytest.raises(Refused) as e:
        recover.check_snapshots(bad)
    assert e.value.code == "bad_request"
