"""Snapshots at the control service (`ferry snapshot create|ls|rm`): pure.

The snapshot itself lives in the store (fsd/backup/snapshots.py); the control
service records its name and position on the volume (persistent, shown by
`ferry volume inspect`, `ferry snapshot ls` and Docker's Get) and hands the
store part to an agent: the volume's live holder, whose `create` first
commits the mount, else any live host (the volume is not mounted, or only
by a dead host: the snapshot then holds what that host had committed).
A job is soft state, like a move: the CLI waits for it, and a job whose
host dies is simply not answered (a pending pin in the store is cleaned by
GC).

Clones (`volume create NEW -o from=VOLUME@SNAP|@TIME`) are jobs of the same
kind, keyed by the new volume: the volume is recorded only once an agent
has made the clone in the store, so a refused or failed clone records
nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from control.leases import Cluster, Decision, Refused, Volume, need_host, need_volume
from fsd.backup.clones import parse_source
from fsd.format.keys import validate_snapshot_name

CREATE, REMOVE, CLONE, RESIZE = "create", "rm", "clone", "resize"      # RESIZE: control/resize.py


@dataclass(frozen=True)
class SnapJob:
    volume: str              # clone: the new volume
    snap: str                # clone: the source (VOLUME@SNAP or VOLUME@absolute time)
    op: str                  # create | rm | clone
    host: str
    seq: int
    options: dict[str, str] = field(default_factory=dict)    # clone: the new volume's options; resize: size
    labels: dict[str, str] = field(default_factory=dict)


def request_clone(c: Cluster, new: str, source: str, options: dict[str, str], labels: dict[str, str],
                  now: float, wall: float) -> Decision:
    """A clone job, or Refused with what is wrong. Options were validated by
    the caller. A create identical to an existing volume is a no-op (Swarm
    creates on every node)."""
    old = c.volumes.get(new)
    if old is not None:
        if old.options == options and old.labels == labels and old.removing is None:
            return Decision(result={"exists": True})
        raise Refused("exists", f"volume {new!r} already exists; remove it first or use another name")
    if any(j.op == CLONE and j.volume == new for j in c.snap_jobs.values()):
        raise Refused("conflict", f"volume {new!r} is being cloned right now")
    try:
        src = parse_source(source, int(wall * 1e9))
    except ValueError as e:
        raise Refused("bad_request", f"from={source}: {e}") from None
    if src.volume not in c.volumes:
        raise Refused("not_found", f"from={source}: volume {src.volume!r} does not exist (list volumes with: "
                                   "ferry volume ls)")
    origin = c.volumes[src.volume]
    if origin.removing is not None:
        raise Refused("conflict", f"from={source}: volume {src.volume!r} is being removed")
    if src.snap is not None and src.snap not in origin.snapshots:
        raise Refused("not_found", f"from={source}: volume {src.volume!r} has no snapshot {src.snap!r} (list "
                                   f"them: ferry snapshot ls {src.volume})")
    if src.at_ns is not None and src.at_ns > wall * 1e9 + 60e9:
        raise Refused("bad_request", f"from={source}: that moment is in the future")
    host = c.holder(src.volume, now) or next((h for h in sorted(c.hosts) if c.alive(h, now)), None)
    if host is None:
        raise Refused("unavailable", "no live agent to reach the store; start one (ferry agent serve) or use "
                                     "ferry fs mkfs --from")
    # A relative moment is fixed now: the agent may take the job a moment later.
    fixed = source if src.at_ns is None else f"{src.volume}@{_iso(src.at_ns)}"
    job = SnapJob(new, fixed, CLONE, host, c.snap_seq + 1, dict(options), dict(labels))
    return Decision(put_snap_jobs=[job], result={"host": host, "seq": job.seq, "source": fixed})


def _iso(ns: int) -> str:
    from fsd.backup.history import format_ns
    return format_ns(ns, precise=True)


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
    return [{"volume": j.volume, "snap": j.snap, "op": j.op, "seq": j.seq,
             **({"options": j.options} if j.op in (CLONE, RESIZE) else {})}
            for j in sorted(c.snap_jobs.values(), key=lambda j: j.seq) if j.host == host_id]


def done(c: Cluster, volume: str, snap: str, host_id: str, seq: int, error: str | None,
         position: list[int] | None, wall: float, note: str | None = None) -> Decision:
    """The agent's answer. A job that is gone (answered already) is ignored."""
    need_host(c, host_id)
    job = c.snap_jobs.get((volume, snap))
    if job is None or job.seq != seq or job.host != host_id:
        return Decision(result={"recorded": False})
    d = Decision(del_snap_jobs=[(volume, snap)], result={"recorded": error is None})
    d.snap_results[seq] = {"error": error, "position": position, "note": note}
    if job.op == RESIZE:
        v = c.volumes.get(volume)
        if error is None and v is not None:
            d.put_volumes.append(replace(v, options={**v.options, "size": job.options["size"]}))
        return d
    if job.op == CLONE:
        if error is None and volume not in c.volumes:
            d.put_volumes.append(Volume(name=volume, options=dict(job.options), labels=dict(job.labels),
                                        created=wall))
        return d
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
