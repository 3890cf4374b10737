"""Several control replicas over one real three-member etcd cluster.

Any replica serves any request; what one learns reaches the others through
etcd's watch. These tests talk to different replicas for the steps of one
story (a move asked through one, answered through another), kill the etcd
leader and a replica in the middle of heartbeats, and check that no lease
that was still valid is lost and that no two hosts are ever granted the same
volume at once.
"""
from __future__ import annotations

import random
import uuid

import pytest
import trio

from control.client import ControlClient
from control.etcd_client import EtcdOptions
from control.etcd_state import EtcdState
from control.leases import Config
from control.server import ControlServer
from tests.helpers.etcd import EtcdCluster, etcd_binary

from .conftest import TOKEN

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="etcd-server is not installed")
# etcd itself stalls writes for about a second when its leader dies; the TTL
# must be longer than that plus a heartbeat (docs/cluster.md "Control replicas").
TTL, HB = 4.0, 1.0


class Replicas:
    def __init__(self, nursery: trio.Nursery, etcd: EtcdCluster, prefix: str):
        self.nursery = nursery
        self.etcd = etcd
        self.prefix = prefix
        self.scopes: list[trio.CancelScope] = []
        self.servers: list[ControlServer] = []
        self.ports: list[int] = []

    async def start(self, n: int = 3) -> None:
        for _ in range(n):
            self.ports.append(0)
            self.servers.append(None)        # type: ignore[arg-type]
            self.scopes.append(trio.CancelScope())
            await self.restart(len(self.ports) - 1)

    async def restart(self, i: int) -> None:
        """(Re)start replica i, on its old port if it had one."""
        state = EtcdState(self.etcd.endpoints, prefix=self.prefix, options=EtcdOptions(timeout=5.0))
        server = ControlServer(state, TOKEN, Config(ttl=TTL, heartbeat=HB))
        scope = trio.CancelScope()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                try:
                    await server.serve("127.0.0.1", self.ports[i], task_status=task_status)
                finally:
                    with trio.CancelScope(shield=True):
                        await state.aclose()
        self.ports[i] = await self.nursery.start(run)
        self.servers[i] = server
        self.scopes[i] = scope

    def addr(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i]}"

    @property
    def all_addrs(self) -> str:
        return ",".join(self.addr(i) for i in range(len(self.ports)))

    def client(self, i: int | None = None) -> ControlClient:
        return ControlClient(self.all_addrs if i is None else self.addr(i), TOKEN, timeout=15)

    def kill(self, i: int) -> None:
        self.scopes[i].cancel()


@pytest.fixture
async def ha(nursery, etcd3):
    for i in range(etcd3.n):           # a test before may have killed a member
        if not etcd3.running(i):
            etcd3.start(i)
    r = Replicas(nursery, etcd3, f"/ha-{uuid.uuid4().hex[:8]}/")
    await r.start()
    yield r
    for s in r.scopes:
        s.cancel()


async def test_a_move_asked_through_one_replica_is_answered_through_another(ha):
    async with ha.client(0) as c0, ha.client(1) as c1, ha.client(2) as c2:
        await c0.volume_create("v")
        await c0.host_register("A")
        await c1.host_register("B")
        assert (await c0.lease_acquire("v", "A"))["status"] == "granted"
        await c0.host_heartbeat("A", [{"name": "v", "in_use": False, "epoch": 1, "upload_lag_s": 0.0}])
        async with trio.open_nursery() as n:
            got: dict = {}

            async def b_wants_it():
                got["b"] = await c1.lease_acquire("v", "B", wait=10)
            n.start_soon(b_wants_it)
            with trio.fail_after(10):
                w = await c2.host_watch("A", timeout=8)          # A's agent long-polls replica 2
            assert w["moves"] == [{"volume": "v", "to": "B"}]
            await c2.lease_release("v", "A", 1)
        assert got["b"]["status"] == "granted" and got["b"]["owner"] == "B" and not got["b"]["takeover"]
        # every replica knows B holds it now
        for c in (c0, c1, c2):
            with trio.fail_after(5):
                while ((await c.volume_get("v"))["lease"] or {}).get("host") != "B":
                    await trio.sleep(0.05)


async def test_heartbeats_through_any_replica_keep_the_lease_and_silence_ends_it(ha):
    async with ha.client(0) as c0, ha.client(1) as c1, ha.client(2) as c2:
        await c0.volume_create("v")
        await c0.host_register("A")
        await c0.host_register("B")
        await c0.lease_acquire("v", "A")
        clients = [c0, c1, c2]
        deadline = trio.current_time() + 3 * TTL
        i = 0
        while trio.current_time() < deadline:        # A heartbeats, each time through another replica
            await clients[i % 3].host_heartbeat("A", [{"name": "v", "in_use": True, "epoch": 1,
                                                        "upload_lag_s": 0.0}])
            i += 1
            r = await clients[(i + 1) % 3].lease_acquire("v", "B")
            # busy, or pending while A's "in use" report is still on its way: never granted
            assert r["status"] in ("busy", "pending") and r["owner"] == "A", r
            await trio.sleep(HB)
        with trio.fail_after(3 * TTL):               # A falls silent: B takes over after the TTL
            r = await c2.lease_acquire("v", "B", wait=3 * TTL)
        assert r["status"] == "granted" and r["takeover"] and r["previous_owner"] == "A"


async def test_snapshot_job_asked_through_one_replica_answered_through_another(ha):
    async with ha.client(0) as c0, ha.client(1) as c1:
        await c0.volume_create("v")
        await c1.host_register("A")
        await c1.host_heartbeat("A")
        async with trio.open_nursery() as n:
            got: dict = {}

            async def ask():
                got["r"] = await c0.snapshot_create("v", "s1", wait=10)
            n.start_soon(ask)
            with trio.fail_after(10):
                while True:
                    w = await c1.host_watch("A", timeout=5)
                    if w["snapshots"]:
                        break
            job = w["snapshots"][0]
            await c1.snapshot_done("v", "s1", "A", job["seq"], None, [3, 7])
        assert got["r"]["position"] == [3, 7]
        assert "s1" in (await c1.volume_get("v"))["snapshots"]


async def _hammer(ha, hosts: list[str], stop: trio.Event, grants: list, errors: list) -> None:
    """Each host heartbeats its own volume through the replica list (failing over),
    and now and then another host tries to take that volume: it must stay busy."""
    async def run(h: str) -> None:
        rng = random.Random(h)
        async with ha.client() as c:
            while not stop.is_set():
                try:
                    await c.host_heartbeat(h, [{"name": f"vol-{h}", "in_use": True, "epoch": 1,
                                                "upload_lag_s": 0.0}])
                    if rng.random() < 0.3:
                        other = rng.choice([x for x in hosts if x != h])
                        r = await c.lease_acquire(f"vol-{other}", h)
                        grants.append((f"vol-{other}", h, r))
                except Exception as e:  # noqa: BLE001 - an outage may fail some calls; counted below
                    errors.append((h, trio.current_time(), repr(e)))
                await trio.sleep(HB / 2)
    async with trio.open_nursery() as n:
        for h in hosts:
            n.start_soon(run, h)


@pytest.mark.parametrize("victim", ["etcd-leader", "replica"])
async def test_no_valid_lease_is_lost_when_the_etcd_leader_or_a_replica_dies(ha, victim):
    hosts = [f"h{i}" for i in range(5)]
    async with ha.client() as c:
        for h in hosts:
            await c.host_register(h)
            await c.volume_create(f"vol-{h}")
            assert (await c.lease_acquire(f"vol-{h}", h))["status"] == "granted"
        await c.volume_create("orphan")
        await c.host_register("dead")
        await c.lease_acquire("orphan", "dead")           # "dead" never heartbeats again
    stop = trio.Event()
    grants: list = []
    errors: list = []
    async with trio.open_nursery() as n:
        n.start_soon(_hammer, ha, hosts, stop, grants, errors)
        await trio.sleep(TTL)
        if victim == "etcd-leader":
            leader = ha.etcd.leader()
            await trio.to_thread.run_sync(ha.etcd.kill, leader)
        else:
            ha.kill(0)
        # meanwhile a takeover of the dead host's volume goes through whatever replica answers
        async with ha.client() as c:
            with trio.fail_after(30):
                r = await c.lease_acquire("orphan", "h0", wait=20)
        await trio.sleep(2 * TTL)
        stop.set()
    assert r["status"] == "granted" and r["takeover"], r
    stolen = [g for g in grants if g[2]["status"] == "granted"]
    assert not stolen, f"a live host's volume was granted to another host: {stolen[:3]}"
    async with ha.client() as c:
        for h in hosts:
            v = await c.volume_get(f"vol-{h}")
            assert v["lease"]["host"] == h and v["lease"]["generation"] == 1, v
    if victim == "etcd-leader":
        await trio.to_thread.run_sync(ha.etcd.start, leader)


async def test_a_replica_with_a_stale_view_cannot_take_a_live_hosts_volume(ha, monkeypatch):
    """Replica 1's copy stops seeing A's heartbeats (as if its watch lagged):
    to it, A looks silent. Its takeover must still fail, because the
    transaction checks that A's liveness record is at the revision it saw."""
    r1 = ha.servers[1]
    real = r1._apply_event
    monkeypatch.setattr(r1, "_apply_event", lambda ev: None if ev.key.startswith("live/A") else real(ev))
    async with ha.client(0) as c0, ha.client(1) as c1:
        await c0.volume_create("v")
        await c0.host_register("A")
        await c0.host_register("B")
        await c0.lease_acquire("v", "A")
        deadline = trio.current_time() + 2 * TTL
        while trio.current_time() < deadline:
            await c0.host_heartbeat("A", [{"name": "v", "in_use": True, "epoch": 1, "upload_lag_s": 0.0}])
            await trio.sleep(HB)
        assert not r1.cluster.alive("A", r1.clock())       # replica 1 believes A is gone...
        async with trio.open_nursery() as n:
            async def keep_beating():
                while True:
                    await c0.host_heartbeat("A", [{"name": "v", "in_use": True, "epoch": 1, "upload_lag_s": 0.0}])
                    await trio.sleep(HB)
            n.start_soon(keep_beating)
            try:
                r = await c1.lease_acquire("v", "B")
            except Exception as e:  # noqa: BLE001
                r = {"status": "error", "error": repr(e)}
            n.cancel_scope.cancel()
        assert r["status"] != "granted", f"replica 1 took a live host's volume: {r}"
        assert (await c0.volume_get("v"))["lease"]["host"] == "A"
