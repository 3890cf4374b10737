"""Control replicas as real processes, killed with SIGKILL, during a planned move
and a takeover after host loss.

tests/control/test_replicas.py stops in-process replicas by cancelling them;
here each replica is `ferry control serve --state etcd://...` in its own
process over the real three-member etcd cluster, and the victim - a replica
(SIGKILL), or the etcd leader (SIGKILL) - dies at a random moment while
host B waits for a volume that live host A hands over (a planned move) and
host D waits for the volume of host C, which stopped heartbeating (a
takeover). What must hold, whatever the moment:

The move's hand-over takes a random time too (an unmount commits what is
left), so the kill lands before, during or after it.

* the planned move completes as a move: A releases, B gets the volume with
  no takeover, and A's release is accepted (so B was not granted it first);
* the takeover completes, and never before C's lease had expired: the grant
  arrives at least one TTL after C's last heartbeat was sent;
* a live host (E, heartbeating throughout through the victim first) keeps
  its lease, unchanged, through the kill.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import trio

from control.client import ControlClient, ControlError, Unreachable
from tests.helpers.etcd import etcd_binary
from tests.helpers.net import wait_listening

from .conftest import TOKEN

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="etcd-server is not installed")
TTL, HB = 4.0, 1.0
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Three `ferry control serve` replicas; killed at teardown whatever happened."""

    def __init__(self, tmp: Path, etcd_url: str):
        self.tmp = tmp
        self.url = etcd_url
        self.ports = [_free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []
        (tmp / "token").write_text(TOKEN)
        (tmp / "token").chmod(0o600)

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            with open(self.tmp / f"replica{i}.log", "ab") as log:   # the child has its own copy of the descriptor
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "cli", "control", "serve", "--listen", f"127.0.0.1:{port}",
                     "--state", self.url, "--token-file", str(self.tmp / "token"),
                     "--lease-ttl", str(TTL), "--heartbeat", str(HB)],
                    stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True))
        for i, port in enumerate(self.ports):
            wait_listening("127.0.0.1", port, self.procs[i], self.tmp / f"replica{i}.log")

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)

    def client(self, first: int = 0) -> ControlClient:
        """A client that asks replica `first`, then the others in turn."""
        order = self.ports[first:] + self.ports[:first]
        return ControlClient(",".join(f"127.0.0.1:{p}" for p in order), TOKEN, timeout=20)


@pytest.fixture
def replicas(etcd3, tmp_path):
    for i in range(etcd3.n):            # a test before may have killed a member
        if not etcd3.running(i):
            etcd3.start(i)
    r = Processes(tmp_path, etcd3.url(f"/proc-{uuid.uuid4().hex[:8]}/"))
    try:
        r.start()
        yield r
    finally:
        r.stop()


async def _heartbeats(c: ControlClient, host: str, vols: list[dict], stop: trio.Event, lost: list) -> None:
    """A live agent: heartbeats every HB until `stop`; records any volume it is told it lost."""
    while not stop.is_set():
        try:
            res = await c.host_heartbeat(host, [dict(v) for v in vols])
            lost.extend(res.get("lost", []))
        except (ControlError, Unreachable):
            pass                            # the agent retries on its next beat
        with trio.move_on_after(HB):
            await stop.wait()


@pytest.mark.parametrize("victim", ["replica", "etcd-leader"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_move_and_takeover_complete_when_a_replica_or_the_etcd_leader_is_killed(replicas, etcd3, victim, seed):
    await _story(replicas, etcd3, victim, seed)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["replica", "etcd-leader"])
@pytest.mark.parametrize("seed", range(3, 13))
async def test_move_and_takeover_under_kills_long(replicas, etcd3, victim, seed):
    await _story(replicas, etcd3, victim, seed)


async def _story(replicas: Processes, etcd3, victim: str, seed: int) -> None:
    rng = random.Random(seed)
    async with replicas.client() as c:
        for h in "ABCDE":
            await c.host_register(h)
        for v, h in (("moving", "A"), ("orphan", "C"), ("steady", "E")):
            await c.volume_create(v)
            assert (await c.lease_acquire(v, h))["status"] == "granted"
            await c.host_heartbeat(h, [{"name": v, "in_use": h == "E", "epoch": 1, "upload_lag_s": 0.0}])
    c_last_sent = time.monotonic()          # C's last sign of life: it is gone from here on
    stop, a_stop = trio.Event(), trio.Event()
    lost_a: list = []
    lost_e: list = []
    out: dict = {}
    a_vols = [{"name": "moving", "in_use": False, "epoch": 1, "upload_lag_s": 0.0}]

    async def host_a(task_status=trio.TASK_STATUS_IGNORED):
        """A: heartbeats, and hands `moving` over when asked (its agent's watch loop)."""
        async with replicas.client(0) as hb, replicas.client(0) as w, trio.open_nursery() as n:
            n.start_soon(_heartbeats, hb, "A", a_vols, a_stop, lost_a)
            task_status.started()
            while True:
                try:
                    res = await w.host_watch("A", timeout=5)
                except (ControlError, Unreachable):
                    await trio.sleep(0.2)
                    continue
                if any(m.get("volume") == "moving" for m in res.get("moves", [])):
                    break
            await trio.sleep(rng.uniform(0.0, 1.5))   # the agent unmounts: fsd commits what is left
            while "released" not in out:
                try:
                    await w.lease_release("moving", "A", 1)
                    out["released"] = time.monotonic()
                except Unreachable:
                    await trio.sleep(0.2)
                except ControlError as e:
                    out["released"] = e       # refused: B had it already, or A's lease was gone
            a_vols.clear()
            a_stop.set()

    async def want(key: str, vol: str, host: str) -> None:
        async with replicas.client(0) as cl:
            await cl.host_register(host)
            deadline = trio.current_time() + 40
            while trio.current_time() < deadline:
                try:
                    r = await cl.lease_acquire(vol, host, wait=min(20.0, deadline - trio.current_time()))
                except Unreachable:
                    continue                  # every replica it knows failed at once: ask again
                if r["status"] == "granted":
                    out[key] = (time.monotonic(), r)
                    return

    async with trio.open_nursery() as n, replicas.client(0) as ce:
        n.start_soon(_heartbeats, ce, "E", [{"name": "steady", "in_use": True, "epoch": 1,
                                             "upload_lag_s": 0.0}], stop, lost_e)
        for h in "BD":   # the waiting hosts are alive too
            n.start_soon(_heartbeats, replicas.client(1), h, [], stop, [])
        await n.start(host_a)
        n.start_soon(want, "B", "moving", "B")
        n.start_soon(want, "D", "orphan", "D")
        await trio.sleep(rng.uniform(0.05, 1.5))
        if victim == "replica":
            replicas.kill(0)
        else:
            leader = etcd3.leader()
            await trio.to_thread.run_sync(etcd3.kill, leader)
        with trio.fail_after(60):
            while "B" not in out or "D" not in out:
                await trio.sleep(0.1)
        await trio.sleep(2 * TTL)        # E must keep its lease well past a TTL after the kill
        stop.set()
        a_stop.set()
    if victim == "etcd-leader":
        await trio.to_thread.run_sync(etcd3.start, leader)

    b_at, b = out["B"]
    assert not b["takeover"], f"the planned move became a takeover: {b}"
    assert isinstance(out.get("released"), float), f"A's release was refused: {out.get('released')}"
    assert "moving" not in lost_a, "A was told it lost the volume it was handing over"
    d_at, d = out["D"]
    assert d["takeover"] and d["previous_owner"] == "C", d
    assert d_at - c_last_sent >= TTL, f"C's volume was taken over {d_at - c_last_sent:.2f}s after it went silent"
    assert not lost_e, f"live host E was told it lost {lost_e}"
    async with replicas.client(1) as c:
        lease = (await c.volume_get("steady"))["lease"]
        assert lease["host"] == "E" and lease["generation"] == 1, lease
        assert (await c.volume_get("moving"))["lease"]["host"] == "B"
