"""The lease / handoff state machine of the control service: pure, no I/O.

Why pure: every ownership decision (grant, busy, pending move, takeover,
release, refusal, expiry) is made here with `now` passed in, so it is tested
as tables of events in milliseconds and the server only has to persist and
apply what this module decides.

Shape: functions read a `Cluster` and return a `Decision` (the reply plus the
records to write or delete); they never mutate. The server persists the
decision's writes (compare-and-swap in the state store) and only then calls
`Cluster.apply`. A refused request raises `Refused` and so changes nothing.

Persistent records (survive a restart of the control service): volumes,
hosts, leases. Soft state (memory only, rebuilt from the agents within one
heartbeat period): heartbeat times, upload lag, requested moves. At start the
server counts every known host as heard from "now" (`Cluster.loaded`), so a
restart of the control service never makes leases expire by itself.

Clock: `now` is a monotonic clock in seconds (the server uses
`time.monotonic()`); wall-clock times (`created`) are passed separately.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

DEFAULT_TTL = 10.0
DEFAULT_HEARTBEAT = 2.0
MAX_LABELS = 64
_HOST_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9._/-]{1,128}")


class Refused(Exception):
    """A request the rules refuse; `code` is a control API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------- records
@dataclass(frozen=True)
class Volume:
    name: str
    options: dict[str, str]
    labels: dict[str, str]
    created: float                     # wall clock, seconds
    # Set by a removal request until the volume is marked removed in the store
    # (control/removals.py): the host asked to do that, "" while no live host can.
    removing: str | None = None
    # User snapshots in the store (control/snapshots.py): name -> {position, created}.
    snapshots: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def durability(self) -> str:
        return self.options.get("durability", "remote")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "labels": dict(self.labels),
                "created": self.created, "removing": self.removing, "snapshots": dict(self.snapshots)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Volume:
        return cls(name=d["name"], options=dict(d["options"]), labels=dict(d["labels"]),
                   created=float(d["created"]), removing=d.get("removing"),
                   snapshots=dict(d.get("snapshots") or {}))


@dataclass(frozen=True)
class Removal:
    """A volume marked removed in the store whose objects are being deleted
    (persistent, keyed by its store root, so two incarnations of one name can
    be deleted at once). `host` runs the deletion; another live host takes
    the job over when that host stops heartbeating."""

    root: str
    name: str
    host: str
    requested: float                   # wall clock, seconds

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "name": self.name, "host": self.host, "requested": self.requested}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Removal:
        return cls(root=d["root"], name=d["name"], host=d["host"], requested=float(d["requested"]))


@dataclass(frozen=True)
class RemovalProgress:
    """How far a deletion got, as its host reports in heartbeats (soft state)."""

    root: str
    deleted: int
    total: int
    bytes: int


@dataclass(frozen=True)
class Host:
    host_id: str
    address: str
    version: str
    registered: float                  # wall clock, seconds

    def to_dict(self) -> dict[str, Any]:
        return {"host_id": self.host_id, "address": self.address, "version": self.version,
                "registered": self.registered}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Host:
        return cls(host_id=d["host_id"], address=d["address"], version=d["version"],
                   registered=float(d["registered"]))


@dataclass(frozen=True)
class Lease:
    """Who owns a volume. `host` None = released. `generation` grows by one on
    every grant to a new holder (CAS token for callers, never reused, kept
    across releases). `epoch` is the storage epoch the holder's fsd claimed,
    as reported by the agent (None until reported)."""

    volume: str
    host: str | None
    generation: int
    epoch: int | None = None
    in_use: bool = False
    # A grant that took the volume over from a dead host, until the new holder
    # reports the epoch it claimed: an acquire it repeats (its answer was lost)
    # must still say "take over", or its daemon would refuse the unsealed epoch.
    takeover_from: str | None = None
    previous_epoch: int | None = None
    # The holder that last gave the lease up cleanly, and at which epoch; kept
    # through the grant that follows (not through a takeover), so a release it
    # repeats because the answer was lost (a replica or the etcd leader died
    # after the write) is answered "released", not "another host holds it".
    released_by: str | None = None
    released_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"volume": self.volume, "host": self.host, "generation": self.generation,
                "epoch": self.epoch, "in_use": self.in_use, "takeover_from": self.takeover_from,
                "previous_epoch": self.previous_epoch, "released_by": self.released_by,
                "released_epoch": self.released_epoch}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lease:
        return cls(volume=d["volume"], host=d["host"], generation=int(d["generation"]),
                   epoch=d["epoch"], in_use=bool(d["in_use"]), takeover_from=d.get("takeover_from"),
                   previous_epoch=d.get("previous_epoch"), released_by=d.get("released_by"),
                   released_epoch=d.get("released_epoch"))


@dataclass(frozen=True)
class Move:
    """A request that `volume`'s owner hand it over to `to` (soft state)."""

    volume: str
    to: str
    requested: float                   # monotonic
    expires: float                     # monotonic
    seq: int                           # identifies this request (a refusal deletes it)


@dataclass
class Decision:
    """What a request decided: the reply, persistent writes, soft-state changes."""

    result: Any = None
    put_volumes: list[Volume] = field(default_factory=list)
    del_volumes: list[str] = field(default_factory=list)
    put_hosts: list[Host] = field(default_factory=list)
    put_leases: list[Lease] = field(default_factory=list)
    del_leases: list[str] = field(default_factory=list)
    # Facts an agent repeats in every heartbeat (in_use, epoch): applied at once,
    # persisted later in batches by the server (losing one costs nothing: the next
    # heartbeat reports it again), so heartbeats never wait for the disk.
    lazy_leases: list[Lease] = field(default_factory=list)
    put_moves: list[Move] = field(default_factory=list)
    del_moves: list[str] = field(default_factory=list)
    heard: dict[str, float] = field(default_factory=dict)        # host -> now
    lags: dict[str, float | None] = field(default_factory=dict)  # volume -> upload lag
    last_gc: dict[str, dict[str, Any]] = field(default_factory=dict)
    put_removals: list[Removal] = field(default_factory=list)
    del_removals: list[str] = field(default_factory=list)        # roots
    progress: list[RemovalProgress] = field(default_factory=list)
    put_snap_jobs: list[Any] = field(default_factory=list)        # control.snapshots.SnapJob (soft)
    del_snap_jobs: list[tuple[str, str]] = field(default_factory=list)
    snap_results: dict[int, dict[str, Any]] = field(default_factory=dict)
    del_results: list[int] = field(default_factory=list)          # answers read by their requester
    # Hosts the decision takes to be dead: it holds only if their liveness
    # record is still at the revision this replica saw (control/records.py).
    silent: list[str] = field(default_factory=list)

    @property
    def persistent(self) -> bool:
        """Whether the decision must be written (and shared with the other replicas)
        before it is applied and answered; heartbeats' facts are written apart."""
        return bool(self.put_volumes or self.del_volumes or self.put_hosts or self.put_leases
                    or self.del_leases or self.put_removals or self.del_removals or self.put_moves
                    or self.del_moves or self.put_snap_jobs or self.del_snap_jobs or self.snap_results
                    or self.del_results)

    @property
    def changes_anything(self) -> bool:
        return self.persistent or bool(self.put_moves or self.del_moves or self.heard or self.lags
                                       or self.lazy_leases)


@dataclass
class Config:
    ttl: float = DEFAULT_TTL
    heartbeat: float = DEFAULT_HEARTBEAT

    def __post_init__(self) -> None:
        if not self.ttl > 0 or not self.heartbeat > 0:
            raise ValueError("lease TTL and heartbeat period must be positive")
        if self.heartbeat * 2 > self.ttl:
            raise ValueError(f"heartbeat period {self.heartbeat}s is too long for lease TTL {self.ttl}s: "
                             "the TTL must cover at least two heartbeats")


# --------------------------------------------------------------------- cluster
@dataclass
class Cluster:
    config: Config = field(default_factory=Config)
    volumes: dict[str, Volume] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    moves: dict[str, Move] = field(default_factory=dict)
    last_heard: dict[str, float] = field(default_factory=dict)
    lags: dict[str, float | None] = field(default_factory=dict)
    last_gc: dict[str, dict[str, Any]] = field(default_factory=dict)   # volume -> owner's last GC pass
    move_seq: int = 0
    removals: dict[str, Removal] = field(default_factory=dict)              # root -> removal
    removal_progress: dict[str, RemovalProgress] = field(default_factory=dict)
    snap_jobs: dict[tuple[str, str], Any] = field(default_factory=dict)     # (volume, snap) -> SnapJob
    snap_seq: int = 0
    snap_results: dict[int, dict[str, Any]] = field(default_factory=dict)   # job seq -> agent's answer

    @classmethod
    def loaded(cls, config: Config, volumes: list[Volume], hosts: list[Host], leases: list[Lease],
               now: float, removals: Iterable[Removal] = ()) -> Cluster:
        """The cluster after a restart: every host counts as heard from now (grace of one TTL)."""
        c = cls(config=config, volumes={v.name: v for v in volumes}, hosts={h.host_id: h for h in hosts},
                leases={lease.volume: lease for lease in leases},
                removals={r.root: r for r in removals})
        c.last_heard = {h.host_id: now for h in hosts}
        return c

    # ------------------------------------------------------------- queries
    def alive(self, host_id: str, now: float) -> bool:
        heard = self.last_heard.get(host_id)
        return heard is not None and now - heard <= self.config.ttl

    def suspect(self, host_id: str, now: float) -> bool:
        """Alive by its lease but silent for over two heartbeat periods: likely
        dead. A Mount elsewhere then waits for the lease to expire instead of
        failing at once (the failover path), and still fails if the host speaks up."""
        heard = self.last_heard.get(host_id)
        return heard is not None and now - heard > 2 * self.config.heartbeat and self.alive(host_id, now)

    def lease_expires(self, lease: Lease) -> float | None:
        if lease.host is None:
            return None
        heard = self.last_heard.get(lease.host)
        return None if heard is None else heard + self.config.ttl

    def holder(self, volume: str, now: float) -> str | None:
        """The host holding a live lease on `volume`, or None."""
        lease = self.leases.get(volume)
        if lease is None or lease.host is None or not self.alive(lease.host, now):
            return None
        return lease.host

    def live_move(self, volume: str, now: float) -> Move | None:
        m = self.moves.get(volume)
        return m if m is not None and m.expires > now else None

    def moves_for(self, host_id: str, now: float) -> list[dict[str, Any]]:
        """Unexpired moves asking `host_id` to give up a volume it holds."""
        out = []
        for m in self.moves.values():
            lease = self.leases.get(m.volume)
            if m.expires > now and lease is not None and lease.host == host_id:
                out.append({"volume": m.volume, "to": m.to})
        return sorted(out, key=lambda d: d["volume"])

    # --------------------------------------------------------------- apply
    def apply(self, d: Decision) -> None:
        for v in d.put_volumes:
            self.volumes[v.name] = v
        for name in d.del_volumes:
            self.volumes.pop(name, None)
            self.lags.pop(name, None)
            self.last_gc.pop(name, None)
        for h in d.put_hosts:
            self.hosts[h.host_id] = h
        for lease in (*d.lazy_leases, *d.put_leases):
            self.leases[lease.volume] = lease
        for name in d.del_leases:
            self.leases.pop(name, None)
        for name in d.del_moves:
            self.moves.pop(name, None)
        for m in d.put_moves:
            self.moves[m.volume] = m
            self.move_seq = max(self.move_seq, m.seq)
        self.last_heard.update(d.heard)
        self.lags.update(d.lags)
        self.last_gc.update(d.last_gc)
        for r in d.put_removals:
            self.removals[r.root] = r
        for root in d.del_removals:
            self.removals.pop(root, None)
            self.removal_progress.pop(root, None)
        for p in d.progress:
            if p.root in self.removals:
                self.removal_progress[p.root] = p
        for j in d.put_snap_jobs:
            self.snap_jobs[(j.volume, j.snap)] = j
            self.snap_seq = max(self.snap_seq, j.seq)
        for k in d.del_snap_jobs:
            self.snap_jobs.pop(k, None)
        self.snap_results.update(d.snap_results)
        for seq in d.del_results:
            self.snap_results.pop(seq, None)
        for old in sorted(self.snap_results)[:-256]:      # answers are read at once; keep a few
            del self.snap_results[old]


# ------------------------------------------------------------------ validation
def validate_host_id(host_id: Any) -> str:
    if not isinstance(host_id, str) or not _HOST_RE.fullmatch(host_id) or host_id[0] in ".-":
        raise Refused("bad_request", f"host id {host_id!r} is not valid: use 1-128 ASCII letters, digits, "
                                     "'.', '_' or '-', not starting with '.' or '-'")
    return host_id


def validate_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise Refused("bad_request", f"{len(labels)} labels; at most {MAX_LABELS} are allowed")
    for k, v in labels.items():
        if not _LABEL_KEY_RE.fullmatch(k):
            raise Refused("bad_request", f"label key {k!r} is not valid: use 1-128 ASCII letters, digits, '._/-'")
        if len(v) > 1024 or not v.isprintable():
            raise Refused("bad_request", f"label {k!r}: value must be printable and at most 1024 characters")


def need_volume(c: Cluster, name: str) -> Volume:
    v = c.volumes.get(name)
    if v is None:
        raise Refused("not_found", f"volume {name!r} does not exist (list volumes with: ferry volume ls)")
    return v


def need_host(c: Cluster, host_id: str) -> Host:
    h = c.hosts.get(host_id)
    if h is None:
        raise Refused("not_found", f"host {host_id!r} is not registered (its agent registers at start: "
                                   "ferry agent serve --host-id ...; list hosts with: ferry hosts ls)")
    return h


# ---------------------------------------------------------------------- volumes
def create_volume(c: Cluster, name: str, options: dict[str, str], labels: dict[str, str],
                  wall: float) -> Decision:
    """Idempotent when identical (Swarm creates on every node); `exists` when different.
    Name and options must have been validated by the caller (control/validate.py)."""
    validate_labels(labels)
    old = c.volumes.get(name)
    if old is not None and old.removing is not None:
        raise Refused("exists", f"volume {name!r} is being removed (waiting for host "
                                f"{old.removing or '(none alive)'} to fence it in the store); "
                                "retry once `ferry volume ls` no longer lists it")
    if old is not None:
        if old.options == options and old.labels == labels:
            return Decision(result=old)
        raise Refused("exists", f"volume {name!r} already exists with options {old.options} and labels "
                                f"{old.labels}; remove it first or use another name")
    v = Volume(name=name, options=dict(options), labels=dict(labels), created=wall)
    return Decision(result=v, put_volumes=[v])


# ------------------------------------------------------------------------ hosts
def register_host(c: Cluster, host_id: str, address: str, version: str, now: float,
                  wall: float) -> Decision:
    validate_host_id(host_id)
    old = c.hosts.get(host_id)
    h = Host(host_id=host_id, address=address, version=version,
             registered=old.registered if old else wall)
    d = Decision(heard={host_id: now})
    if old != h:
        d.put_hosts.append(h)
    held = [{"volume": lease.volume, "epoch": lease.epoch, "generation": lease.generation}
            for lease in sorted(c.leases.values(), key=lambda x: x.volume) if lease.host == host_id]
    d.result = {**h.to_dict(), "leases": held}
    return d


@dataclass(frozen=True)
class VolumeReport:
    """One volume in a heartbeat: what the agent knows about its mount."""

    name: str
    in_use: bool
    epoch: int | None
    upload_lag_s: float | None
    last_gc: dict[str, Any] | None = None


def heartbeat(c: Cluster, host_id: str, reports: list[VolumeReport], now: float,
              progress: list[RemovalProgress] | None = None) -> Decision:
    """Renews every lease `host_id` holds; records in_use / epoch / upload lag of the
    volumes it reports and the progress of the deletions it runs; returns the moves
    requested of it and the volumes it reported but does not hold (`lost`: taken over
    or removed - the agent must stop serving them)."""
    need_host(c, host_id)
    d = Decision(heard={host_id: now},
                 progress=[p for p in progress or [] if p.root in c.removals
                           and c.removals[p.root].host == host_id])
    lost = []
    for r in reports:
        lease = c.leases.get(r.name)
        if lease is None or lease.host != host_id:
            lost.append(r.name)
            continue
        if lease.in_use != r.in_use or (r.epoch is not None and lease.epoch != r.epoch):
            if r.epoch is None:
                d.lazy_leases.append(replace(lease, in_use=r.in_use))
            else:   # a new epoch: the takeover that led to it is over
                d.lazy_leases.append(replace(lease, in_use=r.in_use, epoch=r.epoch, takeover_from=None,
                                             previous_epoch=None))
        d.lags[r.name] = r.upload_lag_s
        if r.last_gc is not None:
            d.last_gc[r.name] = r.last_gc
    d.result = {"ttl": c.config.ttl, "heartbeat": c.config.heartbeat,
                "moves": c.moves_for(host_id, now), "lost": sorted(lost)}
    return d


# ----------------------------------------------------------------------- leases
def _grant(c: Cluster, lease: Lease | None, volume: str, host_id: str, now: float,
           takeover: bool, previous: str | None) -> Decision:
    gen = (lease.generation if lease else 0) + 1
    new = Lease(volume=volume, host=host_id, generation=gen, epoch=None, in_use=False,
                takeover_from=previous if takeover else None,
                previous_epoch=lease.epoch if takeover and lease else None,
                released_by=None if takeover or lease is None else lease.released_by,
                released_epoch=None if takeover or lease is None else lease.released_epoch)
    d = Decision(put_leases=[new], heard={host_id: now}, silent=[previous] if takeover and previous else [])
    if volume in c.moves:
        d.del_moves.append(volume)
    d.lags[volume] = None
    d.result = {"status": "granted", "owner": host_id, "takeover": takeover, "epoch": None,
                "previous_epoch": lease.epoch if lease else None, "previous_owner": previous,
                "generation": gen}
    return d


def acquire(c: Cluster, volume: str, host_id: str, now: float, wait: float = 0.0) -> Decision:
    """The "Leases" table of docs/cluster.md. A `pending` result records a move
    for the owner (kept until `wait` + one TTL from now, so a caller that gave up
    does not leave it behind for long)."""
    v = need_volume(c, volume)
    need_host(c, host_id)
    if v.removing is not None:
        raise Refused("conflict", f"volume {volume!r} is being removed; it cannot be mounted")
    lease = c.leases.get(volume)
    if lease is None or lease.host is None:
        return _grant(c, lease, volume, host_id, now, takeover=False, previous=None)
    if lease.host == host_id:
        # Asked again (its answer was lost, or a retry on another replica): the same
        # answer, a pending takeover included. A move away from us stays until we
        # release or refuse it.
        d = Decision(heard={host_id: now})
        pending = lease.epoch is None and lease.takeover_from is not None
        d.result = {"status": "granted", "owner": host_id, "takeover": pending, "epoch": lease.epoch,
                    "previous_epoch": lease.previous_epoch if pending else None,
                    "previous_owner": lease.takeover_from if pending else None, "generation": lease.generation}
        return d
    owner = lease.host
    if not c.alive(owner, now):
        return _grant(c, lease, volume, host_id, now, takeover=True, previous=owner)
    base = {"owner": owner, "takeover": False, "epoch": lease.epoch, "generation": lease.generation}
    if lease.in_use:
        return Decision(heard={host_id: now}, result={**base, "status": "busy",
                        "message": f"volume {volume!r} is in use on host {owner!r}"})
    move = c.live_move(volume, now)
    if move is not None and move.to != host_id:
        return Decision(heard={host_id: now}, result={**base, "status": "busy",
                        "message": f"volume {volume!r} is already being moved from {owner!r} to {move.to!r}"})
    expires = now + max(wait, 0.0) + c.config.ttl
    if move is not None:        # same requester again: keep the request, extend it
        m = replace(move, expires=max(move.expires, expires))
    else:
        m = Move(volume=volume, to=host_id, requested=now, expires=expires, seq=c.move_seq + 1)
    return Decision(heard={host_id: now}, put_moves=[m],
                    result={**base, "status": "pending", "move_seq": m.seq,
                            "message": f"asked host {owner!r} to release volume {volume!r}"})


def release(c: Cluster, volume: str, host_id: str, epoch: int | None, now: float) -> Decision:
    """Only the holder releases (with the matching epoch if it gives one).
    Releasing a lease that is already free is a no-op, and so is a holder's
    release repeated after the next holder was granted the volume it released
    (its first answer was lost): retries are safe."""
    need_volume(c, volume)
    lease = c.leases.get(volume)
    d = Decision(heard={host_id: now} if host_id in c.hosts else {})
    if lease is None or lease.host is None:
        d.result = {"released": False}
        return d
    if lease.host != host_id and lease.released_by == host_id and epoch in (None, lease.released_epoch):
        d.result = {"released": False}
        return d
    if lease.host != host_id:
        raise Refused("conflict", f"host {host_id!r} does not hold volume {volume!r} (held by "
                                  f"{lease.host!r}); nothing released")
    if epoch is not None and lease.epoch is not None and epoch != lease.epoch:
        raise Refused("conflict", f"volume {volume!r}: release names epoch {epoch} but the lease is at "
                                  f"epoch {lease.epoch}; nothing released")
    d.put_leases.append(replace(lease, host=None, in_use=False, takeover_from=None, previous_epoch=None,
                                released_by=host_id, released_epoch=lease.epoch if epoch is None else epoch))
    d.lags[volume] = None
    # A pending move stays: its requester (waiting in acquire) now gets the lease.
    d.result = {"released": True}
    return d


def refuse_move(c: Cluster, volume: str, host_id: str, now: float) -> Decision:
    """The owner says no (its containers use the volume): the move is dropped and
    a waiting acquire answers `busy`. The owner's lease is marked in use."""
    need_volume(c, volume)
    lease = c.leases.get(volume)
    if lease is None or lease.host != host_id:
        raise Refused("conflict", f"host {host_id!r} does not hold volume {volume!r}; only the owner "
                                  "may refuse a move")
    d = Decision(heard={host_id: now}, result={"refused": volume in c.moves})
    if volume in c.moves:
        d.del_moves.append(volume)
    if not lease.in_use:
        d.put_leases.append(replace(lease, in_use=True))
    return d


def request_move(c: Cluster, volume: str, to: str, now: float, wait: float) -> Decision:
    """Operator's `volume move NAME --to HOST`: ask the owner to release.
    result status: `done` (already on `to`), `free` (nobody holds it: `to` takes it
    at its next mount), `busy` (in use / another move), `pending` (move recorded)."""
    need_volume(c, volume)
    need_host(c, to)
    lease = c.leases.get(volume)
    holder = c.holder(volume, now)
    if lease is not None and lease.host == to:
        return Decision(result={"status": "done", "owner": to})
    if holder is None:
        return Decision(result={"status": "free", "owner": None})
    if lease is not None and lease.in_use:
        return Decision(result={"status": "busy", "owner": holder,
                                "message": f"volume {volume!r} is in use on host {holder!r}"})
    move = c.live_move(volume, now)
    if move is not None and move.to != to:
        return Decision(result={"status": "busy", "owner": holder,
                                "message": f"volume {volume!r} is already being moved to {move.to!r}"})
    expires = now + max(wait, 0.0) + c.config.ttl
    m = (replace(move, expires=max(move.expires, expires)) if move is not None else
         Move(volume=volume, to=to, requested=now, expires=expires, seq=c.move_seq + 1))
    return Decision(put_moves=[m], result={"status": "pending", "owner": holder, "move_seq": m.seq})


def expire_moves(c: Cluster, now: float) -> Decision:
    """Drop moves whose time is up (the server sweeps periodically)."""
    return Decision(del_moves=[name for name, m in c.moves.items() if m.expires <= now])


# ---------------------------------------------------------------------- views
def volume_view(c: Cluster, v: Volume, now: float) -> dict[str, Any]:
    lease = c.leases.get(v.name)
    lease_d = None
    if lease is not None and lease.host is not None:
        exp = c.lease_expires(lease)
        lease_d = {"host": lease.host, "epoch": lease.epoch, "generation": lease.generation,
                   "expires_in": None if exp is None else round(exp - now, 3),
                   "alive": c.alive(lease.host, now), "in_use": lease.in_use,
                   "upload_lag_s": c.lags.get(v.name)}
    move = c.live_move(v.name, now)
    return {**v.to_dict(), "durability": v.durability, "size": v.options.get("size"), "lease": lease_d,
            "state": "removing" if v.removing is not None else "ready", "last_gc": c.last_gc.get(v.name),
            "move": None if move is None else {"to": move.to, "expires_in": round(move.expires - now, 3)}}


def held_by(c: Cluster) -> dict[str, list[str]]:
    """host -> sorted volumes it holds (one pass over the leases)."""
    out: dict[str, list[str]] = {}
    for lease in c.leases.values():
        if lease.host is not None:
            out.setdefault(lease.host, []).append(lease.volume)
    return {h: sorted(vs) for h, vs in out.items()}


def host_view(c: Cluster, h: Host, now: float, held: dict[str, list[str]] | None = None) -> dict[str, Any]:
    heard = c.last_heard.get(h.host_id)
    held = held_by(c) if held is None else held
    return {**h.to_dict(), "alive": c.alive(h.host_id, now),
            "last_heartbeat_age": None if heard is None else round(now - heard, 3),
            "volumes": held.get(h.host_id, [])}


def status_view(c: Cluster, now: float) -> dict[str, Any]:
    held = held_by(c)
    return {"ttl": c.config.ttl, "heartbeat": c.config.heartbeat,
            "hosts": [host_view(c, h, now, held) for _, h in sorted(c.hosts.items())],
            "volumes": [volume_view(c, v, now) for _, v in sorted(c.volumes.items())],
            "removals": [removal_view(c, r, now) for _, r in sorted(c.removals.items())]}


def removal_view(c: Cluster, r: Removal, now: float) -> dict[str, Any]:
    p = c.removal_progress.get(r.root)
    return {**r.to_dict(), "alive": c.alive(r.host, now),
            "deleted": p.deleted if p else None, "total": p.total if p else None,
            "bytes": p.bytes if p else None}
