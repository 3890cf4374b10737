"""Hunting for a double owner or a lost lease across control replicas, at random.

Simulated hosts talk to three replicas over one three-member etcd, each
through the whole replica list (failing over as agents do). At random they
heartbeat, acquire volumes (some waiting), release what they hold, fall
silent for a while, or come back; meanwhile the etcd leader and replicas
are killed and restarted at random moments. Every answer is recorded with
the test's own clock, and two promises are checked against the record:

* **one owner**: no lease generation of a volume is ever granted to two
  different hosts (a grant to a new holder always takes a new generation);
* **no valid lease lost**: a takeover from host H is never answered before
  TTL seconds after the send time of H's last heartbeat that was answered
  before the takeover was asked (a heartbeat answered is recorded in the
  store; its lease is good for TTL from when it was sent). A grant is judged
  when first answered: the holder asking again gets the same grant back.

FERRY_REPLICA_STEPS sets how long it runs (CI: a short run; -m slow: long).
"""
from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field

import pytest
import trio

from control.client import ControlClient, ControlError, Unreachable
from tests.helpers.etcd import etcd_binary

from .conftest import TOKEN
from .test_replicas import HB, TTL, Replicas

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason="etcd-server is not installed")


@dataclass
class Record:
    grants: list[tuple[str, str, int, bool, float, float]] = field(default_factory=list)
    # (volume, host, generation, takeover, asked, answered)
    beats: dict[str, list[tuple[float, float]]] = field(default_factory=dict)   # host -> (sent, answered)
    errors: int = 0

    def check(self) -> list[str]:
        problems = []
        owners: dict[tuple[str, int], str] = {}
        for vol, host, gen, _tk, _a, _b in self.grants:
            prev = owners.setdefault((vol, gen), host)
            if prev != host:
                problems.append(f"{vol}: generation {gen} granted to both {prev} and {host}")
        first: dict[tuple[str, int], tuple] = {}
        for g in sorted(self.grants, key=lambda g: g[5]):
            first.setdefault((g[0], g[2]), g)      # an acquire repeated by the holder repeats that grant
        for vol, host, gen, takeover, asked, answered in first.values():
            if not takeover:
                continue
            prev_owner = next((h for v, h, g, *_ in self.grants if v == vol and g == gen - 1), None)
            if prev_owner is None:
                continue
            sent = [s for s, a in self.beats.get(prev_owner, []) if a < asked]
            if sent and answered < max(sent) + TTL:
                problems.append(f"{vol}: taken over from {prev_owner} by {host} {max(sent) + TTL - answered:.2f}s "
                                f"before its lease (heartbeat sent at {max(sent):.2f}) ran out")
        return problems


async def _host(ha: Replicas, name: str, vols: list[str], rec: Record, stop: trio.Event, seed: int) -> None:
    rng = random.Random(seed)
    held: dict[str, int | None] = {}
    silent_until = 0.0
    async with ControlClient(ha.all_addrs, TOKEN, timeout=10) as c:
        await c.host_register(name)
        while not stop.is_set():
            now = trio.current_time()
            try:
                if now < silent_until:
                    await trio.sleep(0.05)
                    continue
                roll = rng.random()
                if roll < 0.5:
                    sent = trio.current_time()
                    await c.host_heartbeat(name, [{"name": v, "in_use": True, "epoch": 1, "upload_lag_s": 0.0}
                                                  for v in held])
                    rec.beats.setdefault(name, []).append((sent, trio.current_time()))
                elif roll < 0.8:
                    v = rng.choice(vols)
                    asked = trio.current_time()
                    r = await c.lease_acquire(v, name, wait=rng.choice([0, 0, TTL * 1.5]))
                    if r["status"] == "granted":
                        rec.grants.append((v, name, r["generation"], bool(r["takeover"]), asked,
                                           trio.current_time()))
                        held[v] = r.get("epoch")
                elif roll < 0.88 and held:
                    v = rng.choice(sorted(held))
                    del held[v]
                    await c.lease_release(v, name, None)
                elif roll < 0.97 and held:
                    silent_until = now + rng.choice([0.5, TTL * 0.5, TTL * 1.5, TTL * 1.5])   # a stall, or a death
                    if silent_until - now > TTL:
                        held.clear()         # it will have lost them; it comes back as a fresh host
            except (ControlError, Unreachable):
                rec.errors += 1
            await trio.sleep(rng.uniform(0.05, HB / 2))


async def _chaos(ha: Replicas, stop: trio.Event, seed: int) -> None:
    rng = random.Random(seed)
    while not stop.is_set():
        await trio.sleep(rng.uniform(1.0, 3.0))
        what = rng.random()
        if what < 0.4:
            i = await trio.to_thread.run_sync(ha.etcd.leader)
            await trio.to_thread.run_sync(ha.etcd.kill, i)
            await trio.sleep(rng.uniform(0.5, 2.0))
            await trio.to_thread.run_sync(ha.etcd.start, i)
        elif what < 0.8:
            i = rng.randrange(len(ha.scopes))
            ha.kill(i)
            await trio.sleep(rng.uniform(0.2, 1.5))
            await ha.restart(i)


async def _run(nursery, etcd3, steps: float, seed: int) -> Record:
    for i in range(etcd3.n):
        if not etcd3.running(i):
            etcd3.start(i)
    ha = Replicas(nursery, etcd3, f"/rand-{uuid.uuid4().hex[:8]}/")
    await ha.start()
    rec = Record()
    vols = [f"v{i}" for i in range(4)]
    async with ha.client() as c:
        for v in vols:
            await c.volume_create(v)
    stop = trio.Event()
    async with trio.open_nursery() as n:
        for i in range(5):
            n.start_soon(_host, ha, f"h{i}", vols, rec, stop, seed * 100 + i)
        n.start_soon(_chaos, ha, stop, seed)
        await trio.sleep(steps)
        stop.set()
    for s in ha.scopes:
        s.cancel()
    return rec


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_hosts_and_outages_never_make_two_owners_or_lose_a_lease(nursery, etcd3, seed):
    rec = await _run(nursery, etcd3, float(os.environ.get("FERRY_REPLICA_STEPS", "30")), seed)
    assert len(rec.grants) > 10 and sum(1 for g in rec.grants if g[3]) > 0, "the run took over nothing"
    problems = rec.check()
    assert not problems, "\n".join(problems[:10])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 8))
async def test_random_hosts_and_outages_long(nursery, etcd3, seed):
    rec = await _run(nursery, etcd3, 120.0, seed)
    problems = rec.check()
    assert not problems, "\n".join(problems[:10])


def test_the_checker_sees_both_violations():
    rec = Record()
    rec.beats["a"] = [(10.0, 10.1)]
    rec.grants = [("v", "a", 1, False, 9.0, 9.1), ("v", "b", 1, False, 9.5, 9.6),
                  ("v", "c", 2, True, 12.0, 12.5)]
    problems = rec.check()
    assert any("granted to both" in p for p in problems)
    assert any("before its lease" in p for p in problems)
    # the holder asking again gets its takeover again: that is the same grant, judged when first made
    rec.beats["a"] = [(10.0, 10.1), (30.0, 30.1)]
    rec.grants = [("v", "a", 1, False, 9.0, 9.1), ("v", "c", 2, True, 20.0, 20.5), ("v", "c", 2, True, 30.2, 30.3)]
    assert rec.check() == []
