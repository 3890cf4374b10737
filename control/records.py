"""How the control state is laid out in the state store: keys, values, and
the pure mapping between store rows and the in-memory `Cluster`.

Why everything is in the store, soft state included: any control replica
serves any request, so what one replica learns (a heartbeat, a requested
move, a snapshot job and its answer) must reach the others. Each replica
keeps a `Cluster` built from a `list` of the store and kept current by its
watch (`apply_row`), and writes its own decisions as compare-and-swap
transactions (`ops_for`).

Keys (under the backend's prefix; docs/cluster.md "Control state"):

| key                  | value                         | lifetime |
|----------------------|-------------------------------|----------|
| `volumes/<name>`     | Volume                        | until removed |
| `hosts/<id>`         | Host                          | forever |
| `leases/<volume>`    | Lease (holder, generation, epoch, in use) | with the volume |
| `removals/<root>`    | Removal (a deletion job)      | until its objects are gone |
| `live/<host>`        | the host's last heartbeat (upload lags, GC, removal progress) | every heartbeat |
| `moves/<volume>`     | Move (`ttl`: seconds it had left when written) | until answered or expired |
| `snapjobs/<seq>`     | SnapJob (snapshot, clone, resize) | until answered or given up |
| `snapresults/<seq>`  | the agent's answer to job seq | until its requester read it |
| `counters/seq`       | {"move": n, "snap": n}        | forever; allocates job and move numbers |

Liveness is observed, not computed from timestamps: a replica counts a host
as heard at the moment it sees a new `live/<host>` revision (its own write
or its watch), on its own monotonic clock. Clocks of replicas never meet, so
a clock offset between them changes nothing; what a takeover then relies on
is that the owner's `live/` record is still at the revision the deciding
replica saw (a `check` in the same transaction; docs/cluster.md "Leases
across replicas").
"""
from __future__ import annotations

from typing import Any

from control.leases import Cluster, Config, Decision, Host, Lease, Move, Removal, RemovalProgress, Volume
from control.snapshots import SnapJob
from control.state import NEW, Op

COUNTERS = "counters/seq"
PREFIXES = ("volumes/", "hosts/", "leases/", "removals/", "live/", "moves/", "snapjobs/", "snapresults/",
            "counters/")


def vkey(name: str) -> str:
    return f"volumes/{name}"


def hkey(host_id: str) -> str:
    return f"hosts/{host_id}"


def lkey(volume: str) -> str:
    return f"leases/{volume}"


def rkey(root: str) -> str:
    return f"removals/{root}"


def livekey(host_id: str) -> str:
    return f"live/{host_id}"


def mkey(volume: str) -> str:
    return f"moves/{volume}"


def jkey(seq: int) -> str:
    return f"snapjobs/{seq:020d}"


def reskey(seq: int) -> str:
    return f"snapresults/{seq:020d}"


# ------------------------------------------------------------------ values
def move_value(m: Move, now: float) -> dict[str, Any]:
    return {"volume": m.volume, "to": m.to, "seq": m.seq, "ttl": max(0.0, m.expires - now)}


def job_value(j: SnapJob) -> dict[str, Any]:
    return {"volume": j.volume, "snap": j.snap, "op": j.op, "host": j.host, "seq": j.seq,
            "options": dict(j.options), "labels": dict(j.labels)}


def job_from(d: dict[str, Any]) -> SnapJob:
    return SnapJob(d["volume"], d["snap"], d["op"], d["host"], int(d["seq"]), dict(d.get("options") or {}),
                   dict(d.get("labels") or {}))


def live_value(host: str, d: Decision) -> dict[str, Any]:
    """What a heartbeat decision tells the other replicas about `host`."""
    return {"lags": dict(d.lags), "last_gc": dict(d.last_gc),
            "progress": [[p.root, p.deleted, p.total, p.bytes] for p in d.progress]}


# --------------------------------------------------------------- from rows
def cluster_from_rows(config: Config, rows: list[tuple[str, Any, int]], now: float, wall: float) -> Cluster:
    """The cluster a replica starts from: every row applied; every known host
    counts as heard now (a replica that just started has seen no silence)."""
    c = Cluster(config=config)
    c.snap_seq = int(wall * 1000)       # job numbers keep growing across a fresh store (agents' snap_after)
    for key, value, _rev in rows:
        apply_row(c, key, value, now)
    c.last_heard = {h: now for h in c.hosts}
    return c


def apply_row(c: Cluster, key: str, value: Any, now: float) -> None:
    """Apply one stored change (value None: deleted) to the replica's cluster."""
    kind, _, ident = key.partition("/")
    if kind == "volumes":
        if value is None:
            c.apply(Decision(del_volumes=[ident]))
        else:
            c.volumes[ident] = Volume.from_dict(value)
    elif kind == "hosts":
        if value is not None:
            c.hosts[ident] = Host.from_dict(value)
            c.last_heard.setdefault(ident, now)
        else:
            c.hosts.pop(ident, None)
    elif kind == "leases":
        if value is None:
            c.leases.pop(ident, None)
        else:
            c.leases[ident] = Lease.from_dict(value)
    elif kind == "removals":
        if value is None:
            c.apply(Decision(del_removals=[ident]))
        else:
            c.removals[ident] = Removal.from_dict(value)
    elif kind == "live":
        if value is not None:
            c.last_heard[ident] = now
            c.lags.update(value.get("lags") or {})
            c.last_gc.update(value.get("last_gc") or {})
            for root, deleted, total, nbytes in value.get("progress") or []:
                if root in c.removals:
                    c.removal_progress[root] = RemovalProgress(root, deleted, total, nbytes)
    elif kind == "moves":
        if value is None:
            c.moves.pop(ident, None)
        else:
            c.moves[ident] = Move(volume=value["volume"], to=value["to"], requested=now,
                                  expires=now + float(value["ttl"]), seq=int(value["seq"]))
            c.move_seq = max(c.move_seq, int(value["seq"]))
    elif kind == "snapjobs":
        if value is None:
            for k, j in list(c.snap_jobs.items()):
                if jkey(j.seq) == key:
                    del c.snap_jobs[k]
        else:
            j = job_from(value)
            c.snap_jobs[(j.volume, j.snap)] = j
            c.snap_seq = max(c.snap_seq, j.seq)
    elif kind == "snapresults":
        if value is not None:
            c.snap_results[int(ident)] = dict(value)
        else:
            c.snap_results.pop(int(ident), None)
    elif kind == "counters" and value is not None:
        c.move_seq = max(c.move_seq, int(value.get("move", 0)))
        c.snap_seq = max(c.snap_seq, int(value.get("snap", 0)))


# ------------------------------------------------------------------ to ops
def ops_for(c: Cluster, d: Decision, revs: dict[str, int], now: float) -> list[Op]:
    """The compare-and-swap transaction that persists decision `d`, made on `c`
    whose rows were at revisions `revs` (key -> revision; absent: no such key)."""
    ops: list[Op] = []

    def put(key: str, value: Any) -> None:
        ops.append(Op(key, revs.get(key, NEW), value))

    def delete(key: str) -> None:
        if key in revs:
            ops.append(Op(key, revs[key], delete=True))

    for v in d.put_volumes:
        put(vkey(v.name), v.to_dict())
    for h in d.put_hosts:
        put(hkey(h.host_id), h.to_dict())
    for lease in d.put_leases:
        put(lkey(lease.volume), lease.to_dict())
    for name in d.del_volumes:
        delete(vkey(name))
    for name in d.del_leases:
        delete(lkey(name))
    for r in d.put_removals:
        put(rkey(r.root), r.to_dict())
    for root in d.del_removals:
        delete(rkey(root))
    for m in d.put_moves:
        put(mkey(m.volume), move_value(m, now))
    for name in d.del_moves:
        if not any(m.volume == name for m in d.put_moves):
            delete(mkey(name))
    for j in d.put_snap_jobs:
        put(jkey(j.seq), job_value(j))
    for vs in d.del_snap_jobs:
        j = c.snap_jobs.get(vs)
        if j is not None:
            delete(jkey(j.seq))
    for seq, answer in d.snap_results.items():
        put(reskey(seq), dict(answer))
    for seq in d.del_results:
        delete(reskey(seq))
    new_move = max((m.seq for m in d.put_moves), default=0)
    new_snap = max((j.seq for j in d.put_snap_jobs), default=0)
    if new_move > c.move_seq or new_snap > c.snap_seq:
        put(COUNTERS, {"move": max(c.move_seq, new_move), "snap": max(c.snap_seq, new_snap)})
    for host in d.silent:
        ops.append(Op(livekey(host), revs.get(livekey(host), NEW), check=True))
    return ops

