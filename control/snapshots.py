"""Snapshots at the control service (`ferry snapshot create|ls|rm`): pure.

The snapshot itself lives in the store (fsd/snapshots.py); the control
service records its name and position on the volume (persistent, shown by
`ferry volume inspect`, `ferry snapshot ls` and Docker's Get) and hands the
store part to an agent: the volume's live holder, whose `create` first
commits the mount, else any live host (the volume is not mounted, or only
by a dead host: the snapshot then holds what that host had committed).
A job is soft state, like a move: the CLI waits for it, and a job whose
host dies is simply not answered (a pending pin in the store is cleaned by
GC).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from control.leases import Cluster, Decision, Refused, need_host, need_volume
from fsd.format.keys import validate_snapshot_name

CREATE, REMOVE = "create", "rm"


@dataclass(frozen=True)
class SnapJob:
    volume: str
    snap: str
    op: str                  # create | rm
    host: str
    seq: int


def request(c: Cluster, volume: str, snap: str, op: str, now: float) -> Decision:
    v = need_volume(c, volume)
    try:
        validate_snapshot_name(snap)
    except ValueError as e:
        raise Refused("bad_request", str(e)) from None
    if v.removing is not None:
        raise Refused("conflict", f"volume {volume!r} is being removed")
    if op == CREATE and snap in v.snapshots:
        raise Refused("exists", f"volume {volume!r} has a snapshot {snap!r} already; pick another name")
    if op == REMOVE and snap not in v.snapshots:
        raise Refused("not_found", f"volume {volume!r} has no snapshot {snap!r} (list them: ferry snapshot ls "
                                   f"{volume})")
    if (volume, snap) in c.snap_jobs:
        raise Refused("conflict", f"snapshot {snap!r} of {volume!r} is being created or removed right now")
    host = c.holder(volume, now) or next((h for h in sorted(c.hosts) if c.alive(h, now)), None)
    if host is None:
        raise Refused("unavailable", "no live agent to reach the store; start one (ferry agent serve) or use "
                                     "ferry fs snapshot --store URL")
    job = SnapJob(volume, snap, op, host, c.snap_seq + 1)
    return Decision(put_snap_jobs=[job], result={"host": host, "seq": job.seq})


def jobs_for(c: Cluster, host_id: str) -> list[dict[str, Any]]:
    return [{"volume": j.volume, "snap": j.snap, "op": j.op, "seq": j.seq}
            for j in sorted(c.snap_jobs.values(), key=lambda j: j.seq) if j.host == host_id]


def done(c: Cluster, volume: str, snap: str, host_id: str, seq: int, error: str | None,
         position: list[int] | None, wall: float) -> Decision:
    """The agent's answer. A job that is gone (answered already) is ignored."""
    need_host(c, host_id)
    job = c.snap_jobs.get((volume, snap))
    if job is None or job.seq != seq or job.host != host_id:
        return Decision(result={"recorded": False})
    d = Decision(del_snap_jobs=[(volume, snap)], result={"recorded": error is None})
    d.snap_results[seq] = {"error": error, "position": position}
    v = c.volumes.get(volume)
    if error is None and v is not None:
        snaps = dict(v.snapshots)
        if job.op == CREATE:
            snaps[snap] = {"position": list(position or [0, 0]), "created": wall}
        else:
            snaps.pop(snap, None)
        d.put_volumes.append(replace(v, snapshots=snaps))
    return d


def give_up(c: Cluster, volume: str, snap: str, seq: int) -> Decision:
    """The requester stopped waiting: drop the job (a late answer is ignored)."""
    job = c.snap_jobs.get((volume, snap))
    return Decision(del_snap_jobs=[(volume, snap)] if job is not None and job.seq == seq else [])
