"""agent/volumes.py: the per-volume record's transition table, the agent's
per-volume decisions as tables, and a random hunt that drives the decisions
the way agent/service.py does against a model of the host (daemons) and of
the control service (who holds each lease), looking for a daemon the agent
lost track of, a lease nobody will release, or two writers."""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from agent import volumes as V
from agent.volumes import Action, BadTransition, Event, Health, Phase, VolumeRecord, Volumes, step

P, E = Phase, Event

# (from, event) -> to: the whole table, written out again so a change to it is a decision, not an accident.
EXPECTED = {
    (P.IDLE, E.START): P.STARTING, (P.SERVING, E.START): P.STARTING, (P.DEAD, E.START): P.STARTING,
    (P.RELEASING, E.START): P.STARTING, (P.LOST, E.START): P.STARTING,
    (P.STARTING, E.STARTED): P.SERVING, (P.STARTING, E.START_FAILED): P.IDLE,
    (P.STARTING, E.LEFT_DEAD): P.DEAD, (P.STARTING, E.STILL_RUNNING): P.SERVING, (P.STARTING, E.LEASE_LOST): P.LOST,
    (P.IDLE, E.ADOPTED): P.SERVING, (P.IDLE, E.FOUND_DEAD): P.DEAD,
    (P.IDLE, E.ALIVE): P.SERVING, (P.SERVING, E.ALIVE): P.SERVING, (P.DEAD, E.ALIVE): P.SERVING,
    (P.LOST, E.ALIVE): P.LOST,
    (P.SERVING, E.STOP): P.STOPPING, (P.DEAD, E.STOP): P.STOPPING,
    (P.STOPPING, E.STOP_FAILED): P.SERVING, (P.STOPPING, E.STOPPED): P.RELEASING,
    (P.SERVING, E.RESEALED): P.RELEASING, (P.DEAD, E.RESEALED): P.RELEASING, (P.STOPPING, E.RESEALED): P.RELEASING,
    (P.IDLE, E.RELEASE_DUE): P.RELEASING, (P.RELEASING, E.RELEASED): P.IDLE,
    (P.SERVING, E.GONE): P.IDLE, (P.DEAD, E.GONE): P.IDLE, (P.LOST, E.GONE): P.IDLE,
    (P.SERVING, E.LEASE_LOST): P.LOST, (P.DEAD, E.LEASE_LOST): P.LOST, (P.STOPPING, E.LEASE_LOST): P.LOST,
    (P.LOST, E.FORGOTTEN): P.IDLE,
}


def test_transition_table_is_the_documented_one_and_nothing_else_happens():
    assert V.TRANSITIONS == EXPECTED
    for phase in Phase:
        for event in Event:
            rec = VolumeRecord("v", phase=phase)
            if (phase, event) in EXPECTED:
                assert step(rec, event) is EXPECTED[(phase, event)]
            else:
                with pytest.raises(BadTransition, match=f"{event.value} cannot happen while {phase.value}"):
                    step(rec, event)
                assert rec.phase is phase          # a refused event changes nothing


def test_fields_follow_the_phase():
    rec = VolumeRecord("v")
    step(rec, E.START)
    step(rec, E.STARTED, epoch=7)
    assert (rec.phase, rec.epoch) == (P.SERVING, 7)
    rec.lag = 1.5
    step(rec, E.STOP)
    assert rec.epoch == 7                           # the release must name it
    step(rec, E.STOPPED, epoch=7)
    assert (rec.phase, rec.release_epoch, rec.epoch, rec.lag) == (P.RELEASING, 7, None, None)
    step(rec, E.START)                              # a new Mount while the release is undelivered...
    assert step(rec, E.START_FAILED) is P.RELEASING and rec.release_epoch == 7   # ...that fails keeps it due
    step(rec, E.START)
    step(rec, E.STARTED, epoch=8)                   # ...that succeeds supersedes it
    assert (rec.release_due, rec.release_epoch) == (False, None)
    step(rec, E.RESEALED)
    assert (rec.phase, rec.release_epoch) == (P.RELEASING, None)
    step(rec, E.RELEASED)
    assert rec.idle


def test_records_holding_nothing_are_dropped_and_only_mount_ids_persist():
    vols = Volumes()
    assert vols.add_id("v", "a").start
    vols.step("v", E.START)
    vols.step("v", E.STARTED, epoch=3)
    vols.step("w", E.RELEASE_DUE, epoch=2)
    assert vols.active() == ["v"] and vols.pending_releases() == [("w", 2)] and vols.busy("v")
    assert vols.to_dict() == {"volumes": {"v": ["a"]}}
    vols.step("w", E.RELEASED)
    assert "w" not in vols.records
    rec = vols.get("x")
    rec.moving = True
    vols.keep(rec)
    assert "x" in vols.records and not vols.busy("x")
    rec.moving = False
    vols.keep(rec)
    assert "x" not in vols.records


# (phase, mount IDs, health) -> what the monitor does
MONITOR = [
    (P.SERVING, 1, Health.RUNNING, Action.NOTHING),
    (P.SERVING, 1, Health.HUNG, Action.WARN_HUNG),
    (P.SERVING, 1, Health.DEAD, Action.REMOUNT),
    (P.SERVING, 1, Health.ABSENT, Action.REMOUNT),
    (P.IDLE, 1, Health.ABSENT, Action.REMOUNT),         # restarted agent: IDs saved, daemon gone
    (P.LOST, 1, Health.DEAD, Action.REMOUNT),           # its remount then asks control, which says busy
    (P.SERVING, 0, Health.RUNNING, Action.STOP_RELEASE),
    (P.SERVING, 0, Health.DEAD, Action.RESEAL_RELEASE),
    (P.DEAD, 0, Health.DEAD, Action.RESEAL_RELEASE),
    (P.SERVING, 0, Health.ABSENT, Action.FORGET),
    (P.SERVING, 0, Health.HUNG, Action.NOTHING),
    (P.IDLE, 0, Health.ABSENT, Action.NOTHING),
    (P.RELEASING, 0, Health.ABSENT, Action.NOTHING),    # the heartbeat retries the release
    (P.LOST, 0, Health.RUNNING, Action.STOP_ONLY),
    (P.LOST, 0, Health.DEAD, Action.STOP_ONLY),
    (P.LOST, 0, Health.ABSENT, Action.FORGET),
    # the host tore down the mounts under the mount root; the daemon serves the containers holding it
    (P.SERVING, 1, Health.DETACHED, Action.NOTHING),    # a remount would kill their mount, reach nobody
    (P.LOST, 1, Health.DETACHED, Action.NOTHING),
    (P.SERVING, 0, Health.DETACHED, Action.STOP_RELEASE),
    (P.LOST, 0, Health.DETACHED, Action.STOP_ONLY),
]


@pytest.mark.parametrize("phase,ids,health,want", MONITOR)
def test_monitor_decisions(phase, ids, health, want):
    assert V.on_monitor(VolumeRecord("v", ids={f"c{i}" for i in range(ids)}, phase=phase), health) is want


# (phase, mount IDs, health or None) -> Mount ; move ; last unmount ; lease lost
DECISIONS = [
    (P.IDLE, 0, None, Action.START, Action.RELEASE, Action.RELEASE, Action.NOTHING),
    (P.SERVING, 1, Health.RUNNING, Action.JOIN, Action.REFUSE, Action.STOP_RELEASE, Action.NOTHING),
    (P.SERVING, 0, Health.DEAD, Action.START, Action.STOP_RELEASE, Action.STOP_RELEASE, Action.STOP_ONLY),
    (P.DEAD, 0, Health.DEAD, Action.START, Action.STOP_RELEASE, Action.STOP_RELEASE, Action.STOP_ONLY),
    (P.RELEASING, 0, None, Action.START, Action.RELEASE, Action.RELEASE, Action.NOTHING),
    (P.LOST, 1, Health.RUNNING, Action.REFUSE, Action.REFUSE, Action.STOP_ONLY, Action.NOTHING),
    (P.LOST, 0, Health.RUNNING, Action.REFUSE, Action.STOP_ONLY, Action.STOP_ONLY, Action.STOP_ONLY),
]


@pytest.mark.parametrize("phase,ids,health,mount,move,last,lost", DECISIONS)
def test_request_decisions(phase, ids, health, mount, move, last, lost):
    rec = VolumeRecord("v", ids={f"c{i}" for i in range(ids)}, phase=phase)
    assert V.needs_probe(rec) is (health is not None)
    assert V.on_mount(rec, health) is mount
    assert V.on_move(rec) is move
    assert V.on_last_unmount(rec) is last
    assert V.on_lease_lost(rec) is lost
    # mounts made here would not reach the host: every Mount is refused, whatever runs
    assert V.on_mount(rec, health, host_link=False) is Action.UNREACHABLE


def test_a_failed_start_leaves_a_detached_daemon_running():
    assert V.after_failed_start(Health.DETACHED, lease_elsewhere=False) is Event.STILL_RUNNING
    assert V.after_failed_start(Health.DETACHED, lease_elsewhere=True) is Event.LEASE_LOST


# ======================================================================= the hunt
HOST, OTHER = "a", "b"


@dataclass
class World:
    """The host's daemons and the control service's leases, as the agent cannot see them."""

    daemon: str | None = None          # None, "running", "dead"
    owner: str | None = None           # lease holder at control
    control_up: bool = True
    epoch: int = 0
    log: list[str] = field(default_factory=list)


class Violation(AssertionError):
    pass


@dataclass
class Sim:
    """Drives agent/volumes.py's decisions the way agent/service.py acts on them."""

    rng: random.Random
    deciders: dict[str, Callable[..., Action]]
    w: World = field(default_factory=World)
    vols: Volumes = field(default_factory=Volumes)
    next_id: int = 0

    @property
    def rec(self) -> VolumeRecord:
        return self.vols.get("v")

    def health(self) -> Health:
        return {None: Health.ABSENT, "running": Health.RUNNING, "dead": Health.DEAD}[self.w.daemon]

    # ------------------------------------------------------------ the agent's actions
    def release(self, epoch: int | None) -> None:
        if self.rec.phase is not P.RELEASING:
            self.vols.step("v", E.RELEASE_DUE, epoch=epoch)
        if not self.w.control_up:
            return                                   # stays RELEASING; the heartbeat retries
        if self.w.owner == HOST:
            self.w.owner = None
        self.vols.step("v", E.RELEASED)

    def ensure_running(self) -> bool:
        was_lost = self.rec.phase is P.LOST
        self.vols.step("v", E.START)
        failure, acquired, epoch = True, False, None
        elsewhere = (self.w.control_up and self.w.owner == OTHER) or was_lost
        if self.w.control_up and self.w.owner in (None, HOST):
            self.w.owner, acquired = HOST, True
            if self.w.daemon == "dead":
                self.w.daemon = None                 # killed before starting again
            if self.rng.random() < 0.8:
                self.w.epoch += 1
                self.w.daemon, failure, epoch = "running", False, self.w.epoch
        if not failure:
            self.vols.step("v", E.STARTED, epoch=epoch)
        else:       # what the probe after a failed start finds
            event = V.after_failed_start(self.health(), lease_elsewhere=elsewhere)
            if event is E.START_FAILED and self.w.daemon == "dead":
                self.w.daemon = None                 # killed
            self.vols.step("v", event)
        if failure and acquired and not self.vols.busy("v"):
            self.release(None)
        return not failure

    def stop_and_release(self) -> None:
        rec = self.vols.step("v", E.STOP)
        epoch = rec.epoch
        if self.w.daemon == "running" and self.rng.random() < 0.15:
            self.vols.step("v", E.STOP_FAILED)      # busy mountpoint: still serving
            return
        if self.w.daemon == "dead":
            epoch = None                             # resealed
        self.w.daemon = None
        self.vols.step("v", E.STOPPED, epoch=epoch)
        self.release(epoch)

    def stop_only(self) -> None:
        self.w.daemon = None
        self.vols.step("v", E.FORGOTTEN)

    def act(self, action: Action) -> None:
        if action is Action.STOP_RELEASE:
            self.stop_and_release()
        elif action is Action.STOP_ONLY:
            self.stop_only()
        elif action is Action.RELEASE:
            self.release(None)

    # ------------------------------------------------------------ events
    def mount(self) -> None:
        rec = self.rec
        health = self.health() if V.needs_probe(rec) else None
        action = self.deciders["on_mount"](rec, health)
        if action is Action.JOIN:
            self.vols.step("v", E.ALIVE)
        elif action is Action.REFUSE or (action is Action.START and not self.ensure_running()):
            return
        if self.w.owner != HOST:
            raise Violation(f"a new container was given the volume while {self.w.owner} holds its lease")
        self.next_id += 1
        self.vols.add_id("v", f"c{self.next_id}")

    def unmount(self) -> None:
        if not self.rec.ids:
            return
        if self.vols.remove_id("v", self.rng.choice(sorted(self.rec.ids))).stop:
            self.act(self.deciders["on_last_unmount"](self.rec))

    def monitor(self) -> None:
        rec, health = self.rec, self.health()
        action = self.deciders["on_monitor"](rec, health)
        if action is Action.NOTHING and rec.in_use and health is Health.RUNNING and V.allowed(rec.phase, E.ALIVE):
            self.vols.step("v", E.ALIVE)
        elif action is Action.REMOUNT:
            self.ensure_running()
        elif action is Action.RESEAL_RELEASE:
            self.w.daemon = None
            self.vols.step("v", E.RESEALED)
            self.release(None)
        elif action is Action.FORGET:
            self.vols.step("v", E.GONE)
        else:
            self.act(action)

    def move(self) -> None:
        """Host b asks for the volume; it takes the lease once released."""
        action = self.deciders["on_move"](self.rec)
        if action is not Action.REFUSE:
            self.act(action)
        if self.w.owner is None and self.w.control_up:
            self.w.owner = OTHER

    def takeover(self) -> None:
        """Our lease expired (a stalled host) and b took the volume over; the next heartbeat says so."""
        if self.w.owner != HOST:
            return
        self.w.owner = OTHER
        rec = self.rec
        if rec.has_daemon and rec.phase is not P.LOST:
            self.vols.step("v", E.LEASE_LOST)
            if self.deciders["on_lease_lost"](rec) is Action.STOP_ONLY:
                self.stop_only()

    def other_leaves(self) -> None:
        if self.w.owner == OTHER and self.w.control_up:
            self.w.owner = None

    def heartbeat(self) -> None:
        if self.rec.phase is P.RELEASING:
            self.release(self.rec.release_epoch)

    def crash_daemon(self) -> None:
        if self.w.daemon == "running":
            self.w.daemon = "dead"

    def toggle_control(self) -> None:
        self.w.control_up = not self.w.control_up

    # ------------------------------------------------------------ what must hold
    def check(self, quiet: bool = False) -> None:
        rec, w = self.rec, self.w
        if w.daemon is not None and not rec.has_daemon:
            raise Violation(f"a {w.daemon} daemon the agent forgot (phase {rec.phase.value})")
        if rec.phase in (P.SERVING, P.DEAD) and w.owner != HOST:
            raise Violation(f"phase {rec.phase.value} while control gives the lease to {w.owner}")
        if w.daemon == "running" and w.owner == OTHER and rec.phase is not P.LOST:
            raise Violation("two writers: our daemon runs, b holds the lease, and the agent does not know")
        if w.owner == HOST and not (rec.has_daemon or rec.in_use or rec.phase is P.RELEASING):
            raise Violation(f"lease leaked: held at control, phase {rec.phase.value}, nothing here uses it")
        if rec.epoch is not None and not rec.has_daemon:
            raise Violation("an epoch kept without a daemon")
        if rec.release_due and rec.phase not in (P.RELEASING, P.STARTING):
            raise Violation(f"a release due while {rec.phase.value}")
        if rec.phase is P.RELEASING and not rec.release_due:
            raise Violation("RELEASING with no release due")
        if quiet and (w.owner == HOST or w.daemon is not None or rec.phase is not P.IDLE):
            raise Violation(f"after everyone left: owner {w.owner}, daemon {w.daemon}, phase {rec.phase.value}")


EVENTS = ["mount", "mount", "unmount", "unmount", "monitor", "move", "takeover", "other_leaves",
          "heartbeat", "crash_daemon", "toggle_control"]
DECIDERS = {name: getattr(V, name) for name in ("on_mount", "on_monitor", "on_move", "on_last_unmount",
                                                 "on_lease_lost")}


def hunt(seed: int, steps: int, deciders: dict[str, Callable[..., Action]] = DECIDERS) -> None:
    sim = Sim(random.Random(seed), deciders)
    trail: list[str] = []
    try:
        for _ in range(steps):
            ev = sim.rng.choice(EVENTS)
            trail.append(ev)
            getattr(sim, ev)()
            sim.check()
        # everyone leaves: containers stop, control comes back, the loops run
        sim.w.control_up = True
        for _ in range(len(sim.rec.ids) + 3):
            trail.append("unmount")
            sim.unmount()
            sim.check()
        for ev in ("monitor", "monitor", "heartbeat", "monitor", "heartbeat"):
            trail.append(ev)
            getattr(sim, ev)()
            sim.check()
        while sim.w.daemon == "running" or sim.rec.phase is not P.IDLE:
            trail.append("monitor")
            sim.monitor()
            sim.heartbeat()
            if len(trail) > steps + 200:
                break
        sim.check(quiet=True)
    except (Violation, BadTransition) as e:
        raise Violation(f"seed {seed}: {e} after {' '.join(trail[-12:])}") from e


@pytest.mark.parametrize("seed", range(300))
def test_random_hunt(seed):
    hunt(seed, 60)


@pytest.mark.slow
def test_random_hunt_long():
    for seed in range(20000):
        hunt(seed, 200)


def _broken(name: str, wrong: Callable[..., Action]) -> dict[str, Callable[..., Action]]:
    return {**DECIDERS, name: wrong}


@pytest.mark.parametrize("deciders,why", [
    # a move that releases the lease but leaves our daemon running
    (_broken("on_move", lambda rec: Action.REFUSE if rec.in_use else Action.RELEASE), "daemon"),
    # a monitor that never retries a dead daemon's release
    (_broken("on_monitor", lambda rec, h: Action.NOTHING if not rec.in_use and h is Health.DEAD
             else V.on_monitor(rec, h)), "after everyone left"),
    # a new container joining a volume whose lease another host holds
    (_broken("on_mount", lambda rec, h: Action.JOIN if h is Health.RUNNING else V.on_mount(rec, h)),
     "new container"),
])
def test_the_hunt_catches_broken_rules(deciders, why):
    """A checker that cannot fail is a defect: each broken rule is found within a few seeds."""
    with pytest.raises(Violation, match=why):
        for seed in range(300):
            hunt(seed, 60, deciders)
