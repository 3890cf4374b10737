"""The agent's record of each volume on this host, and the rules that move it. Pure.

Why one record: what the agent knows about a volume - the Docker mount IDs
using it here, whether its filesystem daemon runs under a lease this host
holds, the epoch and upload lag last reported, a lease release that has not
reached the control service, a move being handled - used to live in six
parallel maps that code paths cleared selectively, so they could disagree
(a daemon forgotten while its release was still pending, a stale pending
release retried after the volume was mounted again). Here it is one
`VolumeRecord` whose `phase` only changes through `TRANSITIONS`, and the
agent's per-volume decisions (`on_mount`, `on_monitor`, `on_move`,
`on_last_unmount`, `on_lease_lost`) are functions of the record and what
the daemon's health probe saw. agent/service.py does the I/O they ask for.

The phases (every change happens under the volume's lock in the agent):

    IDLE       no daemon of ours; no lease we know we hold
    STARTING   acquiring the lease and starting the daemon (a Mount, a remount)
    SERVING    the daemon runs under this host's lease
    STOPPING   the daemon is being unmounted cleanly (last Unmount, a move)
    DEAD       the daemon died and nobody uses the volume here: reseal, release
    RELEASING  no daemon; a lease release has not reached control yet (a failed
               start returns here rather than to IDLE while one is due)
    LOST       control gave the lease to another host while containers here use
               the mount: storage fencing fails its next commit; no release is due

A record with phase IDLE, no mount IDs and no move in hand is dropped.
Only the mount IDs are persisted (agent/statefile.py): after an agent
restart the daemons are re-adopted from fsd's registry (`adopt`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Phase(Enum):
    IDLE = "idle"
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"
    DEAD = "dead"
    RELEASING = "releasing"
    LOST = "lost"


# Phases in which a daemon of ours may exist (run, be starting or stopping, or be dead).
HAS_DAEMON = frozenset({Phase.STARTING, Phase.SERVING, Phase.STOPPING, Phase.DEAD, Phase.LOST})


class Event(Enum):
    START = "start"                # a Mount or a remount begins: acquire the lease, start fsd
    STARTED = "started"            # fsd runs under our lease
    START_FAILED = "start_failed"  # lease refused, or fsd did not start; no daemon of ours is left
    LEFT_DEAD = "left_dead"        # the start failed before it cleared a daemon that had died
    STILL_RUNNING = "still_running"  # the start failed; the daemon it found (hung) still runs
    ADOPTED = "adopted"            # at agent start: a running daemon of a previous agent
    FOUND_DEAD = "found_dead"      # at agent start: a registered daemon whose process is gone
    ALIVE = "alive"                # the health probe saw the daemon running
    STOP = "stop"                  # clean unmount begins
    STOP_FAILED = "stop_failed"    # unmount failed and the daemon still serves (busy mountpoint)
    STOPPED = "stopped"            # unmounted cleanly (or died while stopping and was resealed)
    RESEALED = "resealed"          # a dead daemon's epoch was sealed by a remount+unmount
    RELEASE_DUE = "release_due"    # no daemon here, but a lease to give back (a failed start, a move)
    RELEASED = "released"          # control heard the release (or refused it for good)
    GONE = "gone"                  # no daemon registered any more, nobody uses it here
    LEASE_LOST = "lease_lost"      # control says another host holds the lease now
    FORGOTTEN = "forgotten"        # a lost volume's daemon was stopped: nothing of ours is left


class BadTransition(Exception):
    """An event that cannot happen in the record's phase: a bug in the agent."""


_ANY_DAEMON = (Phase.SERVING, Phase.DEAD, Phase.STOPPING)
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    # A Mount (or the monitor's remount) starts from anything but a start in flight.
    **{(p, Event.START): Phase.STARTING
       for p in (Phase.IDLE, Phase.SERVING, Phase.DEAD, Phase.RELEASING, Phase.LOST)},
    (Phase.STARTING, Event.STARTED): Phase.SERVING,
    (Phase.STARTING, Event.START_FAILED): Phase.IDLE,
    (Phase.STARTING, Event.LEFT_DEAD): Phase.DEAD,
    (Phase.STARTING, Event.STILL_RUNNING): Phase.SERVING,
    (Phase.STARTING, Event.LEASE_LOST): Phase.LOST,  # a hung daemon found, the lease another host's
    (Phase.IDLE, Event.ADOPTED): Phase.SERVING,
    (Phase.IDLE, Event.FOUND_DEAD): Phase.DEAD,
    (Phase.IDLE, Event.ALIVE): Phase.SERVING,       # adopted while its mountpoint hung, answering now
    (Phase.SERVING, Event.ALIVE): Phase.SERVING,
    (Phase.DEAD, Event.ALIVE): Phase.SERVING,
    (Phase.LOST, Event.ALIVE): Phase.LOST,          # still running, still fenced
    (Phase.SERVING, Event.STOP): Phase.STOPPING,
    (Phase.DEAD, Event.STOP): Phase.STOPPING,
    (Phase.STOPPING, Event.STOP_FAILED): Phase.SERVING,
    (Phase.STOPPING, Event.STOPPED): Phase.RELEASING,
    **{(p, Event.RESEALED): Phase.RELEASING for p in _ANY_DAEMON},
    (Phase.IDLE, Event.RELEASE_DUE): Phase.RELEASING,
    (Phase.RELEASING, Event.RELEASED): Phase.IDLE,
    **{(p, Event.GONE): Phase.IDLE for p in (Phase.SERVING, Phase.DEAD, Phase.LOST)},
    **{(p, Event.LEASE_LOST): Phase.LOST for p in _ANY_DAEMON},
    (Phase.LOST, Event.FORGOTTEN): Phase.IDLE,
}


@dataclass
class VolumeRecord:
    """Everything this host's agent knows about one volume."""

    name: str
    ids: set[str] = field(default_factory=set)   # Docker mount IDs using it here (persisted)
    phase: Phase = Phase.IDLE
    epoch: int | None = None          # the daemon's epoch, once it reported one
    lag: float | None = None          # upload lag (s) the daemon last reported
    release_due: bool = False         # a lease release control has not heard yet
    release_epoch: int | None = None  # the epoch that release names (None: whatever we hold)
    moving: bool = False              # a move request for it is being handled

    @property
    def in_use(self) -> bool:
        return bool(self.ids)

    @property
    def has_daemon(self) -> bool:
        return self.phase in HAS_DAEMON

    @property
    def idle(self) -> bool:
        """Nothing worth keeping: the record may be dropped."""
        return self.phase is Phase.IDLE and not self.ids and not self.moving


def allowed(phase: Phase, event: Event) -> bool:
    return (phase, event) in TRANSITIONS


def step(rec: VolumeRecord, event: Event, *, epoch: int | None = None) -> Phase:
    """Apply `event` to `rec` (in place) and return the new phase.

    STARTED and ADOPTED set the epoch; STOPPED and RELEASE_DUE set the epoch
    the release must name; leaving a daemon phase forgets the epoch and lag.

    A release still due survives a start that fails: the start's way back to
    IDLE lands in RELEASING instead, so the heartbeat still delivers it. A start
    that succeeds supersedes it (control granted the lease to us again), and a
    lost lease has nothing left to release."""
    new = TRANSITIONS.get((rec.phase, event))
    if new is None:
        raise BadTransition(f"volume {rec.name!r}: {event.value} cannot happen while {rec.phase.value}")
    if event in (Event.STARTED, Event.ADOPTED, Event.STILL_RUNNING, Event.LEASE_LOST, Event.RELEASED):
        rec.release_due, rec.release_epoch = False, None
    if new is Phase.RELEASING:
        rec.release_due = True
        rec.release_epoch = epoch if event in (Event.STOPPED, Event.RELEASE_DUE) else None
    if new is Phase.IDLE and rec.release_due:
        new = Phase.RELEASING
    rec.phase = new
    if event in (Event.STARTED, Event.ADOPTED):
        rec.epoch, rec.lag = epoch, None
    if new not in HAS_DAEMON:
        rec.epoch, rec.lag = None, None
    return new


# ============================================================ Docker mount IDs
class UnknownMount(Exception):
    """Unmount of a mount ID this host does not have for that volume."""


@dataclass(frozen=True)
class Outcome:
    """What a mount-ID change means for the volume's daemon.

    start: first ID - the daemon must run (acquire lease, start fsd)
    stop:  last ID gone - stop fsd and release the lease
    """

    start: bool = False
    stop: bool = False
    changed: bool = True


def add_id(rec: VolumeRecord, mount_id: str) -> Outcome:
    """Why by ID: Docker calls Mount once per container and Unmount when it
    stops; counting IDs makes a retried Mount idempotent and an Unmount of an
    unknown ID detectable."""
    if mount_id in rec.ids:
        return Outcome(changed=False)
    first = not rec.ids
    rec.ids.add(mount_id)
    return Outcome(start=first)


def remove_id(rec: VolumeRecord, mount_id: str) -> Outcome:
    if mount_id not in rec.ids:
        raise UnknownMount(f"volume {rec.name!r} has no mount with ID {mount_id!r} on this host"
                           + (f" (mounted here by {len(rec.ids)} other container(s))" if rec.ids else
                              " (it is not mounted here)"))
    rec.ids.discard(mount_id)
    return Outcome(stop=not rec.ids)


# ============================================================ decisions
class Health(Enum):
    """What a probe of the volume's daemon saw (agent/fsd_proc.py probes)."""

    RUNNING = "running"      # pid alive and mountpoint answering
    DEAD = "dead"            # registered but pid gone, or mountpoint ENOTCONN
    ABSENT = "absent"        # no daemon registered for this mountpoint
    HUNG = "hung"            # mountpoint did not answer a stat in time (reported, not remounted)
    # pid alive, its mount gone from this namespace only because the host tore down the mounts
    # under the mount root (agent/hostlink.py): it still serves the containers that hold it
    DETACHED = "detached"


class Action(Enum):
    NOTHING = "nothing"
    JOIN = "join"                    # the daemon runs: just count the new mount ID
    START = "start"                  # acquire the lease and start the daemon
    WARN_HUNG = "warn_hung"          # in use, not answering: say so, do not remount
    REMOUNT = "remount"              # in use, daemon gone: detach and start again, loudly
    STOP_RELEASE = "stop_release"    # unmount cleanly, then release the lease
    RESEAL_RELEASE = "reseal_release"  # dead with nobody using it: seal its epoch, release
    FORGET = "forget"                # nothing of ours left to stop or release
    STOP_ONLY = "stop_only"          # lease lost: stop the daemon, release nothing
    REFUSE = "refuse"                # a move of a volume in use here
    RELEASE = "release"              # a move of a volume with no daemon here: release the lease
    UNREACHABLE = "unreachable"      # mounts made here would not reach the host: refuse the Mount


def on_mount(rec: VolumeRecord, health: Health | None, *, host_link: bool = True) -> Action:
    """A Mount arrived. `health` is None when no probe was needed (nothing of ours here).
    `host_link`: mounts made under the mount root still reach the host (agent/hostlink.py);
    when they do not, a Mount would hand Docker an empty directory, so it is refused."""
    if not host_link:
        return Action.UNREACHABLE
    if rec.phase is Phase.LOST:
        return Action.REFUSE             # another host holds the lease: a new container must not start on it
    if (rec.has_daemon or rec.in_use) and health is Health.RUNNING and allowed(rec.phase, Event.ALIVE):
        return Action.JOIN
    return Action.START


def after_failed_start(health: Health, *, lease_elsewhere: bool) -> Event:
    """What a failed start leaves, from a probe of the daemon after it. `lease_elsewhere`:
    control refused because another host holds the lease, or had told us so before
    (the record was LOST). A daemon that died under an epoch another host now holds
    is not ours to reseal: the agent kills what is left of it (START_FAILED)."""
    if health is Health.DEAD:
        return Event.START_FAILED if lease_elsewhere else Event.LEFT_DEAD
    if health in (Health.RUNNING, Health.HUNG, Health.DETACHED):
        return Event.LEASE_LOST if lease_elsewhere else Event.STILL_RUNNING
    return Event.START_FAILED


def needs_probe(rec: VolumeRecord) -> bool:
    """Whether a Mount must probe the daemon before deciding (anything of ours here)."""
    return rec.has_daemon or rec.in_use


def on_monitor(rec: VolumeRecord, health: Health) -> Action:
    """The periodic check: remount a dead daemon still in use; stop a daemon nobody uses.
    A DETACHED daemon is left to the containers that hold it: a remount could not reach them."""
    if health is Health.DETACHED:
        if rec.in_use:
            return Action.NOTHING
        health = Health.RUNNING          # nobody here uses it any more: stop it as a running one
    if rec.in_use:
        if health is Health.RUNNING:
            return Action.NOTHING
        if health is Health.HUNG:
            return Action.WARN_HUNG
        return Action.REMOUNT
    if not rec.has_daemon:
        return Action.NOTHING            # nothing of ours runs (RELEASING: the heartbeat retries the release)
    if rec.phase is Phase.LOST:
        return Action.STOP_ONLY if health in (Health.RUNNING, Health.HUNG, Health.DEAD) else Action.FORGET
    if health is Health.RUNNING:
        return Action.STOP_RELEASE
    if health is Health.DEAD:
        return Action.RESEAL_RELEASE
    if health is Health.ABSENT:
        return Action.FORGET
    return Action.NOTHING


def on_last_unmount(rec: VolumeRecord) -> Action:
    """The last container here stopped using the volume."""
    if rec.phase is Phase.LOST:
        return Action.STOP_ONLY
    return Action.STOP_RELEASE if rec.has_daemon else Action.RELEASE


def on_move(rec: VolumeRecord) -> Action:
    """Another host asked for the volume."""
    if rec.in_use:
        return Action.REFUSE
    if rec.phase is Phase.LOST:
        return Action.STOP_ONLY
    if rec.has_daemon:
        return Action.STOP_RELEASE
    return Action.RELEASE


def on_lease_lost(rec: VolumeRecord) -> Action:
    """Control says another host took the volume over (our lease had expired)."""
    if not rec.has_daemon:
        return Action.NOTHING
    return Action.NOTHING if rec.in_use else Action.STOP_ONLY


# ============================================================ the table of records
@dataclass
class Volumes:
    """The records of every volume this agent has something to do with."""

    records: dict[str, VolumeRecord] = field(default_factory=dict)

    def get(self, name: str) -> VolumeRecord:
        """The record of `name`; a fresh IDLE one (not kept until it holds something)."""
        rec = self.records.get(name)
        return rec if rec is not None else VolumeRecord(name)

    def keep(self, rec: VolumeRecord) -> None:
        """Store `rec` after a change, or drop it when it holds nothing."""
        if rec.idle:
            self.records.pop(rec.name, None)
        else:
            self.records[rec.name] = rec

    def step(self, name: str, event: Event, *, epoch: int | None = None) -> VolumeRecord:
        rec = self.get(name)
        step(rec, event, epoch=epoch)
        self.keep(rec)
        return rec

    # ---------------------------------------------------------- queries
    def ids(self, name: str) -> set[str]:
        return set(self.get(name).ids)

    def count(self, name: str) -> int:
        return len(self.get(name).ids)

    def in_use(self, name: str) -> bool:
        return self.get(name).in_use

    def busy(self, name: str) -> bool:
        """In use here, or a daemon of ours exists: a removal must not proceed."""
        rec = self.get(name)
        return rec.in_use or rec.has_daemon

    def names(self) -> list[str]:
        """Volumes mounted by containers here."""
        return sorted(n for n, r in self.records.items() if r.ids)

    def active(self) -> list[str]:
        """Volumes in use here or with a daemon of ours: what heartbeats report and the monitor checks."""
        return sorted(n for n, r in self.records.items() if r.ids or r.has_daemon)

    def pending_releases(self) -> list[tuple[str, int | None]]:
        return sorted((n, r.release_epoch) for n, r in self.records.items() if r.phase is Phase.RELEASING)

    def phases(self) -> dict[str, str]:
        return {n: r.phase.value for n, r in sorted(self.records.items())}

    # ---------------------------------------------------------- mount IDs, persisted
    def add_id(self, name: str, mount_id: str) -> Outcome:
        rec = self.get(name)
        out = add_id(rec, mount_id)
        self.keep(rec)
        return out

    def remove_id(self, name: str, mount_id: str) -> Outcome:
        rec = self.get(name)
        out = remove_id(rec, mount_id)
        self.keep(rec)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The persisted part: mount IDs per volume (agent/statefile.py, version 1)."""
        return {"volumes": {n: sorted(r.ids) for n, r in sorted(self.records.items()) if r.ids}}

    @classmethod
    def from_dict(cls, d: Any) -> Volumes:
        """ValueError for anything that is not a table we wrote."""
        if not isinstance(d, dict) or not isinstance(d.get("volumes", {}), dict):
            raise ValueError("mount table must be an object with a 'volumes' object")
        out = cls()
        for v, ids in d.get("volumes", {}).items():
            if not isinstance(v, str) or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError(f"mount table entry {v!r} must map a name to a list of mount IDs")
            if ids:
                out.records[v] = VolumeRecord(v, ids=set(ids))
        return out
