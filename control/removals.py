"""Removing volumes: the control service's side, pure (no I/O, `now` passed in).

Why the control service hands removal to an agent: only agents reach the
object store, and a volume must be fenced and marked removed *in the store*
before its name is free again; otherwise a volume re-created under the name
would find the old objects and mount them (docs/cluster.md, "Removal").
So a removal runs in two steps, each one a job for a live host:

1. `request_removal` (docker volume rm, ferry volume rm): refused while a
   live host holds the lease. Otherwise the volume record is marked
   `removing` and assigned to a host (the requesting agent, else any live
   host). From then on the volume cannot be leased, and the name cannot be
   created again. The host fences the volume in the store and reports
   `removal_marked`: the volume record and its lease are deleted (the
   name is free), and a `Removal` job, keyed by the store root, is
   recorded.
2. The host deletes the objects in the background, reports progress in
   its heartbeats, and reports `removal_done` at the end.

A job outlives its host: a host that stops heartbeating loses its jobs to
the next live host that asks (`claim_jobs`, called by `host.watch`).
Both store steps are idempotent, so two hosts doing one job by mistake (a
host that was only partitioned) is harmless.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from control.leases import Cluster, Decision, Refused, Removal, need_host, need_volume


def _live_hosts(c: Cluster, now: float) -> list[str]:
    return sorted(h for h in c.hosts if c.alive(h, now))


def request_removal(c: Cluster, name: str, requester: str | None, now: float) -> Decision:
    """Mark `name` for removal and pick the host that fences it in the store.
    result: {"status": "removing", "host": host or None (no live host yet)}."""
    v = need_volume(c, name)
    live = _live_hosts(c, now)
    if v.removing in live:          # already assigned to a live host
        return Decision(result={"status": "removing", "host": v.removing})
    holder = c.holder(name, now)
    if holder is not None:
        raise Refused("busy", f"volume {name!r} is in use on host {holder!r}: stop its containers "
                              "(docker rm) so the host releases it, then remove it")
    host = requester if requester in live else (live[0] if live else "")
    lease = c.leases.get(name)
    d = Decision(put_volumes=[replace(v, removing=host)], result={"status": "removing", "host": host or None},
                 silent=[lease.host] if lease is not None and lease.host is not None else [])
    if name in c.moves:
        d.del_moves.append(name)
    return d


def claim_jobs(c: Cluster, host_id: str, now: float) -> Decision:
    """The removal jobs `host_id` should run, taking over those of hosts that
    stopped heartbeating (and those nobody could take). result: a list of
    {"name", "root"} (root None: the volume is still to be fenced)."""
    need_host(c, host_id)
    d = Decision()
    jobs: list[dict[str, Any]] = []
    for name, v in sorted(c.volumes.items()):
        if v.removing is None:
            continue
        if v.removing != host_id and (not v.removing or not c.alive(v.removing, now)):
            d.put_volumes.append(replace(v, removing=host_id))
        elif v.removing != host_id:
            continue
        jobs.append({"name": name, "root": None})
    for root, r in sorted(c.removals.items()):
        if r.host != host_id and not c.alive(r.host, now):
            d.put_removals.append(replace(r, host=host_id))
        elif r.host != host_id:
            continue
        jobs.append({"name": r.name, "root": root})
    d.result = jobs
    return d


def _need_job(c: Cluster, name: str, host_id: str) -> Any:
    v = need_volume(c, name)
    if v.removing != host_id:
        raise Refused("conflict", f"volume {name!r}: host {host_id!r} is not the one removing it "
                                  f"({v.removing or 'not being removed'})")
    return v


def removal_marked(c: Cluster, name: str, host_id: str, root: str, wall: float) -> Decision:
    """`host_id` fenced the volume in the store (root "": it was not on the
    store at all): forget the volume and its lease, record the deletion job."""
    _need_job(c, name, host_id)
    d = Decision(del_volumes=[name], result={"root": root or None})
    if name in c.leases:
        d.del_leases.append(name)
    if name in c.moves:
        d.del_moves.append(name)
    if root:
        d.put_removals.append(Removal(root=root, name=name, host=host_id, requested=wall))
    return d


def removal_aborted(c: Cluster, name: str, host_id: str) -> Decision:
    """The host found the volume in use after all: it stays, unchanged."""
    v = _need_job(c, name, host_id)
    return Decision(put_volumes=[replace(v, removing=None)], result=None)


def removal_done(c: Cluster, root: str, host_id: str) -> Decision:
    """Every object under `root` is deleted. Idempotent: a job already done
    (by another host that took it over) is not an error."""
    r = c.removals.get(root)
    d = Decision(result={"done": r is not None})
    if r is not None:
        d.del_removals.append(root)
    return d
