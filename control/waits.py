"""What a waiting request is waiting for: pure predicates over the cluster.

Why a module: `lease.acquire` with `wait`, `volume.move`, `volume.remove`
with `wait` and snapshot jobs all wait the same way (re-check whenever the
state changes or a tick passes, until a deadline), but each has its own
rule for "done". The rules live here, as functions of `(cluster, now)` that
return the answer once there is one and None while still waiting, so they
are tested as tables; the server runs them all through one generic wait
(`ControlServer._wait_for`). `ACQUIRE` asks the server to run the lease
rules (`leases.acquire`) again, now with no wait: the situation changed
and the grant, if any, must be decided and written as usual.
"""
from __future__ import annotations

from typing import Any

from control.leases import Cluster

ACQUIRE = "acquire"


def move_outcome(c: Cluster, name: str, owner: str, seq: int, now: float) -> dict[str, Any] | None:
    """`volume.move`: the owner released (or lost) the volume, refused, or went silent."""
    lease = c.leases.get(name)
    if lease is None or lease.host != owner:
        return {"status": "released", "owner": None if lease is None else lease.host, "from": owner}
    if not c.alive(owner, now):
        return {"status": "free", "owner": None, "message": f"host {owner!r} stopped heartbeating; its lease expired"}
    m = c.moves.get(name)
    if m is None or m.seq != seq:
        return {"status": "busy", "owner": owner,
                "message": f"host {owner!r} refused to release volume {name!r} (in use there)"}
    return None


def pending_acquire_outcome(c: Cluster, vol: str, host: str, seq: int, now: float) -> str | dict[str, Any] | None:
    """`lease.acquire` that asked the owner to move the volume: ACQUIRE once the
    lease is free, ours or its holder dead; busy once the owner refused (or
    turned out to use it); None while the move is pending."""
    lease = c.leases.get(vol)
    if lease is None or lease.host is None or lease.host == host or not c.alive(lease.host, now):
        return ACQUIRE
    m = c.moves.get(vol)
    if m is None or m.seq != seq or m.to != host or lease.in_use:
        return {"status": "busy", "owner": lease.host, "takeover": False, "epoch": lease.epoch,
                "generation": lease.generation,
                "message": f"volume {vol!r} is in use on host {lease.host!r} (it refused the move)"}
    return None


def owner_fate(c: Cluster, vol: str, owner: str, beat_before: int, beat_now: int, now: float) -> str | None:
    """`lease.acquire` of a volume in use on `owner`: ACQUIRE once the lease is gone
    or the owner is dead (its lease expired), "busy" once the owner proved it is
    alive with a heartbeat recorded after the request (its liveness record's
    revision moved from `beat_before` to `beat_now`; a store hiccup that only
    grants every host grace proves nothing), None while it stays silent."""
    lease = c.leases.get(vol)
    if lease is None or lease.host != owner or not c.alive(owner, now):
        return ACQUIRE
    if beat_now != beat_before:
        return "busy"
    return None


def in_use_ended(c: Cluster, vol: str, owner: str, now: float) -> str | None:
    """`lease.acquire` with `in_use_wait` of a volume in use on a live `owner`:
    ACQUIRE (ask again) once the owner no longer holds it in use (its last
    container stopped: it releases, or no longer reports it in use), or
    died; None while its containers still use it. This is a Swarm task
    moved by a drain or an update: its new Mount arrives while the old task
    is still stopping."""
    lease = c.leases.get(vol)
    if lease is None or lease.host != owner or not lease.in_use or not c.alive(owner, now):
        return ACQUIRE
    return None


def removal_outcome(c: Cluster, name: str) -> str | None:
    """`volume.remove` with `wait`: "fenced" once the volume record is gone (the
    host fenced it in the store), "aborted" once the host found it in use, None
    while the host has not answered."""
    v = c.volumes.get(name)
    if v is None:
        return "fenced"
    if v.removing is None:
        return "aborted"
    return None


def job_answer(c: Cluster, seq: int) -> dict[str, Any] | None:
    """A snapshot/clone/resize job's answer, once its agent sent it."""
    return c.snap_results.get(seq)
