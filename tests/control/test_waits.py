"""The rules of waiting requests (control/waits.py) as tables, and the server's
waits under trio's MockClock: a lease that expires and a move nobody answers
take their full virtual time and no real time."""
from __future__ import annotations

import pytest
import trio
import trio.testing

from control import waits
from control.leases import Cluster, Config, Host, Lease, Move, Volume
from control.server import ControlServer
from tests.helpers.memstate import MemoryState

from .conftest import TOKEN, Running

TTL, HB = 10.0, 2.0


def cluster(lease_host: str | None = "A", in_use: bool = False, heard: dict | None = None,
            move: Move | None = None) -> Cluster:
    c = Cluster(config=Config(ttl=TTL, heartbeat=HB))
    c.volumes["v"] = Volume("v", {}, {}, 0.0)
    for h in ("A", "B"):
        c.hosts[h] = Host(h, "", "", 0.0)
    c.last_heard = dict(heard if heard is not None else {"A": 100.0, "B": 100.0})
    if lease_host is not None:
        c.leases["v"] = Lease("v", lease_host, 3, epoch=2, in_use=in_use)
    if move is not None:
        c.moves["v"] = move
    return c


MOVE = Move("v", "B", 100.0, 200.0, seq=7)


@pytest.mark.parametrize("c, now, want", [
    (cluster(move=MOVE), 101.0, None),                                      # still asked, owner alive
    (cluster(lease_host=None, move=MOVE), 101.0, "released"),               # released
    (cluster(lease_host="B", move=MOVE), 101.0, "released"),                # went to someone
    (cluster(move=MOVE), 100.0 + TTL + 0.1, "free"),                        # owner silent past the TTL
    (cluster(move=None), 101.0, "busy"),                                    # refused: the move was dropped
    (cluster(move=Move("v", "B", 100.0, 200.0, seq=8)), 101.0, "busy"),     # another move replaced ours
])
def test_move_outcome(c, now, want):
    out = waits.move_outcome(c, "v", "A", 7, now)
    assert (out and out["status"]) == want


@pytest.mark.parametrize("c, now, want", [
    (cluster(move=MOVE), 101.0, None),
    (cluster(lease_host=None, move=MOVE), 101.0, waits.ACQUIRE),
    (cluster(lease_host="B", move=MOVE), 101.0, waits.ACQUIRE),             # already ours
    (cluster(move=MOVE), 100.0 + TTL + 0.1, waits.ACQUIRE),                 # owner dead: take over
    (cluster(move=None), 101.0, "busy"),
    (cluster(in_use=True, move=MOVE), 101.0, "busy"),                       # it turned out to be in use
    (cluster(move=Move("v", "C", 100.0, 200.0, seq=7)), 101.0, "busy"),     # a move to someone else
])
def test_pending_acquire_outcome(c, now, want):
    out = waits.pending_acquire_outcome(c, "v", "B", 7, now)
    assert (out["status"] if isinstance(out, dict) else out) == want


@pytest.mark.parametrize("c, beat, now, want", [
    (cluster(in_use=True), 5, 101.0, None),                                 # silent, lease still valid
    (cluster(in_use=True, heard={"A": 100.9, "B": 100.0}), 5, 101.0, None),  # grace after a store hiccup: no proof
    (cluster(in_use=True), 6, 101.0, "busy"),                               # a heartbeat was recorded: alive
    (cluster(in_use=True), 5, 100.0 + TTL + 0.1, waits.ACQUIRE),            # lease expired
    (cluster(lease_host=None), 5, 101.0, waits.ACQUIRE),
])
def test_owner_fate(c, beat, now, want):
    assert waits.owner_fate(c, "v", "A", 5, beat, now) == want


def test_removal_outcome_and_job_answer():
    c = cluster()
    c.volumes["v"] = Volume("v", {}, {}, 0.0, removing="A")
    assert waits.removal_outcome(c, "v") is None
    c.volumes["v"] = Volume("v", {}, {}, 0.0)
    assert waits.removal_outcome(c, "v") == "aborted"
    del c.volumes["v"]
    assert waits.removal_outcome(c, "v") == "fenced"
    assert waits.job_answer(c, 5) is None
    c.snap_results[5] = {"error": None}
    assert waits.job_answer(c, 5) == {"error": None}


@pytest.fixture
async def mock_control(nursery, autojump_clock):
    """A control service on trio's MockClock (autojump) with a thread-free store."""
    state = MemoryState()
    server = ControlServer(state, TOKEN, Config(ttl=TTL, heartbeat=HB))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    yield Running(server, port)


async def test_a_silent_owner_loses_its_lease_after_exactly_the_ttl(mock_control):
    async with mock_control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.host_register("B")
        assert (await c.lease_acquire("v", "A"))["status"] == "granted"
        await c.host_heartbeat("A", [{"name": "v", "in_use": True, "epoch": 2, "upload_lag_s": 0.0}])
        heard = trio.current_time()
        r = await c.lease_acquire("v", "B", wait=60)       # A never speaks again
        waited = trio.current_time() - heard
    assert r["status"] == "granted" and r["takeover"] and r["previous_owner"] == "A"
    assert TTL <= waited <= TTL + 1.5, waited              # virtual seconds: the TTL plus at most a tick


async def test_a_move_nobody_answers_times_out_and_then_expires(mock_control):
    async with mock_control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.host_register("B")
        await c.lease_acquire("v", "A")

        async def a_keeps_beating():              # alive, not using it, but never answers the move
            while True:
                await c.host_heartbeat("A", [{"name": "v", "in_use": False, "epoch": 2, "upload_lag_s": 0.0}])
                await trio.sleep(HB)
        async with trio.open_nursery() as n:
            n.start_soon(a_keeps_beating)
            t0 = trio.current_time()
            r = await c.lease_acquire("v", "B", wait=5)
            assert r["status"] == "pending" and 5 <= trio.current_time() - t0 <= 6.5
            assert mock_control.server.cluster.moves["v"].to == "B"
            with trio.fail_after(TTL + 3):                  # the move expires wait + TTL after it was asked
                while "v" in mock_control.server.cluster.moves:
                    await trio.sleep(0.5)
            n.cancel_scope.cancel()
