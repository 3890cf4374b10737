"""The agent: the one place where the plugin protocol, the mount table, the
control client and the filesystem daemons are wired together.

Why this shape: every Docker request and every background event that
touches a volume (Mount, Unmount, a move request, a dead daemon) takes that
volume's lock, so "is it mounted here, by whom, is fsd running" is always
decided on a consistent view. What the agent knows of each volume is one
record (agent/volumes.py) whose phase changes only through its transition
table, and what to do is decided there, purely; this module does the I/O.
The mount IDs - the authoritative "in use here" - are saved before the
request is answered.

Background tasks (docs/cluster.md):
  * heartbeat: renews every lease this host holds and reports, per served
    volume, {name, in_use, epoch, upload_lag_s}; retries lease releases that
    did not reach the control service; re-registers when the service forgot us;
  * watch: long-polls `host.watch` for move requests: a volume unused here is
    unmounted cleanly and released, a volume in use is refused;
  * monitor: a daemon that died (pid gone, ENOTCONN) while containers use its
    volume is detached and remounted, loudly; a daemon with no mount IDs
    (an Unmount whose stop failed, an agent crash mid-Mount) is stopped.
At start the agent loads its mount table and adopts the daemons fsd's mount
registry lists under its mount root; nothing running is unmounted by a restart.
"""
from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from agent import docker_engine, hostlink, plugin
from agent.defaults import DEFAULT_IN_USE_WAIT
from agent.fsd_proc import FsdError, FsdManager
from agent.http import serve_unix
from agent.metrics import AgentMetrics, VolumeHere
from agent.removal_jobs import RemovalAborted, RemovalRunner
from agent.statefile import StateFile
from agent.store_jobs import StoreJobs
from agent.volumes import (
    Action,
    Event,
    Health,
    Phase,
    UnknownMount,
    Volumes,
    after_failed_start,
    allowed,
    needs_probe,
    on_last_unmount,
    on_lease_lost,
    on_monitor,
    on_mount,
    on_move,
)
from control import protocol
from control.client import ControlClient, ControlError, Unreachable
from fsd.format.superblock import DEFAULT_IMAGE_SIZE

log = logging.getLogger("ferry.agent")
STORE_ONLY_RECHECK = 3.0     # s: how long a create elsewhere may take to reach control (store first)
VERSION = "0.1.0"


@dataclass
class AgentConfig:
    control: str
    host_id: str
    store_url: str
    cache_dir: Path
    socket: Path = Path("/run/docker/plugins/ferry.sock")
    mount_root: Path = Path("/var/lib/ferry/mounts")
    state_dir: Path = Path("/var/lib/ferry/agent")
    token: str = ""
    address: str = ""
    key_dir: Path | None = None     # keys of encrypted volumes: <key_dir>/<name>.key
    heartbeat: float = 2.0          # until the control service says otherwise
    acquire_wait: float = 60.0      # waiting for a planned move (Docker allows 120 s per Mount)
    # How long a Mount waits for a volume in use on another (live) host to be
    # released: a Swarm task moved by a drain or an update mounts before the
    # old task has stopped. 0: refuse at once.
    in_use_wait: float = DEFAULT_IN_USE_WAIT
    mount_timeout: float = 45.0
    monitor_interval: float = 2.0
    watch_timeout: float = 30.0
    # How long a Mount waits for a control service that is down (Docker gives a Mount 120 s).
    control_wait: float = 90.0
    tls: ssl.SSLContext | None = None   # TLS to the control service (None: plain TCP)
    # The local engine's API socket: the agent makes dockerd name the plugin
    # (agent/docker_engine.py) so Swarm places ferry volumes here. None: leave dockerd alone.
    docker_socket: str | None = None
    # Running as a Docker managed plugin: watch that mounts under mount_root
    # still reach the host (agent/hostlink.py).
    managed_plugin: bool = False


@dataclass(frozen=True)
class _Start:
    """How a lease acquire + fsd start ended."""

    failure: str | None        # None: fsd runs under our lease
    epoch: int | None          # its epoch, when it runs
    acquired: bool             # control granted the lease (a failed start must give it back)
    lease_elsewhere: bool      # control said another host holds it


class Agent:
    def __init__(self, cfg: AgentConfig, control: Any = None, fsd: FsdManager | None = None,
                 engine: docker_engine.DockerEngine | None = None,
                 marker: hostlink.MountMarker | None = None) -> None:
        self.cfg = cfg
        if marker is None and cfg.managed_plugin:
            marker = hostlink.MountMarker(cfg.mount_root)
        self.marker = marker            # None: mounts reach the host by construction (host agent)
        self._link_reported = False
        self.exit_reason: str | None = None     # why the agent ended itself (run() returned)
        self.monitor_rounds = 0         # completed passes of the monitor (observers wait on it)
        if engine is None and cfg.docker_socket:
            engine = docker_engine.DockerEngine(cfg.docker_socket)
        self.engine = engine
        self.host = cfg.host_id
        self.control = control if control is not None else ControlClient(cfg.control, cfg.token, tls=cfg.tls or False)
        self.fsd = fsd or FsdManager(cfg.store_url, cfg.cache_dir, cfg.mount_root,
                                     mount_timeout=cfg.mount_timeout, key_dir=cfg.key_dir)
        self.statefile = StateFile(cfg.state_dir)
        self.volumes = Volumes()        # one record per volume: mount IDs, phase, epoch (agent/volumes.py)
        self.registered = trio.Event()
        self.heartbeat_period = cfg.heartbeat
        self._locks: dict[str, trio.Lock] = {}
        self._kick = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.removals = RemovalRunner(self.host, cfg.store_url, self.control, self._lock, self.table_in_use,
                                      key_dir=cfg.key_dir)
        self.jobs = StoreJobs(self.host, cfg.store_url, self.control, self.fsd)
        self._granted_at: dict[str, float] = {}     # per volume: when control last granted us its lease
        self._snap_seen = 0              # highest snapshot job number taken from host.watch
        self._trio_token: trio.lowlevel.TrioToken | None = None     # set while running
        self.metrics = AgentMetrics(self._volumes_any_thread, self.removals.progress)

    # ================================================================ helpers
    def _lock(self, volume: str) -> trio.Lock:
        return self._locks.setdefault(volume, trio.Lock())

    def table_in_use(self, volume: str) -> bool:
        return self.volumes.busy(volume)

    async def _save(self) -> None:
        try:
            await trio.to_thread.run_sync(self.statefile.save, self.volumes)
        except OSError as e:
            log.error("host=%s cannot save agent state %s: %s (mount IDs will be lost if the agent "
                      "restarts now)", self.host, self.statefile.path, e)

    def kick_heartbeat(self) -> None:
        self._kick.set()

    def _control_err(self, what: str, e: Exception) -> dict[str, Any]:
        if isinstance(e, Unreachable):
            return plugin.err(f"{what}: {e}")
        return plugin.err(f"{what}: {getattr(e, 'message', str(e))}")

    # ================================================================ metrics
    def _volumes_here(self) -> list[VolumeHere]:
        return [VolumeHere(name, rec.phase.value, len(rec.ids),
                           self.fsd.cache_dir(name) / "status.json" if rec.has_daemon else None)
                for name, rec in sorted(self.volumes.records.items())]

    def _volumes_any_thread(self) -> list[VolumeHere]:
        """The records, read on the trio thread whichever thread asks (a scrape
        comes from prometheus-client's HTTP thread)."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:        # not on the trio thread
            if self._trio_token is None:
                return []
            try:
                return trio.from_thread.run_sync(self._volumes_here, trio_token=self._trio_token)
            except trio.RunFinishedError:
                return []
        return self._volumes_here()

    # ================================================================ plugin API
    async def handle(self, path: str, body: bytes) -> dict[str, Any]:
        """The HTTP handler: one plugin request in, one JSON reply out."""
        try:
            req = plugin.parse_request(path, body)
        except plugin.BadRequest as e:
            log.info("host=%s refused %s: %s", self.host, path, e)
            return plugin.err(str(e))
        if isinstance(req, plugin.Activate):
            return plugin.activate_reply()
        if isinstance(req, plugin.Capabilities):
            return plugin.capabilities_reply()
        handlers: dict[type, Callable[[Any], Awaitable[dict[str, Any]]]] = {
            plugin.Create: self.create, plugin.Remove: self.remove, plugin.Mount: self.mount,
            plugin.Unmount: self.unmount, plugin.Path: self.path, plugin.Get: self.get,
            plugin.ListVolumes: self.list_volumes}
        return await handlers[type(req)](req)

    async def create(self, req: plugin.Create) -> dict[str, Any]:
        """Docker's `volume create`. With `-o from=VOLUME@SNAP|@TIME` the
        control service hands the clone to an agent (maybe this one) and
        records the volume only once it exists in the store. A name the store
        holds but the control service does not know (its state was lost) is
        refused: a new empty volume must never replace it, nor adopt it silently."""
        refusal = await self._store_only(req.name)
        if refusal:
            return plugin.err(refusal)
        try:
            await self.control.volume_create(req.name, req.options, {}, wait=max(self.cfg.acquire_wait, 120.0))
        except (ControlError, Unreachable) as e:
            return self._control_err(f"cannot create volume {req.name!r}", e)
        try:
            created = await self.fsd.mkfs_if_missing(req.name, req.options)
        except FsdError as e:
            return plugin.err(str(e))
        log.info("host=%s volume=%s created (%s)", self.host, req.name,
                 "formatted on the store" if created else "already on the store")
        return plugin.ok()

    async def _store_only(self, name: str) -> str | None:
        """Why `name` must not be created, if the store has it and control does not."""
        try:
            await self.control.volume_get(name)
            return None
        except ControlError as e:
            if e.code != "not_found":
                return None              # the create itself reports what is wrong
        except Unreachable:
            return None
        try:
            in_store = await self.fsd.exists_in_store(name)
        except FsdError as e:
            return str(e)
        if not in_store:
            return None
        # Another node may be creating it right now (Swarm creates on every node;
        # a clone is in the store before control records it): ask control again.
        await trio.sleep(STORE_ONLY_RECHECK)
        try:
            await self.control.volume_get(name)
            return None
        except ControlError as e:
            if e.code != "not_found":
                return None
        except Unreachable:
            return None
        log.error("host=%s volume=%s exists in the store but not at the control service: refusing to create "
                  "it (ferry control recover brings it back)", self.host, name)
        return (f"volume {name!r} exists in the store but the control service does not know it (was the control "
                f"state lost?): bring it back with `ferry control recover --store {self.fsd.store_url}`, or "
                f"remove it from the store with `ferry fs rm --store {self.fsd.store_url} {name}` first")

    async def remove(self, req: plugin.Remove) -> dict[str, Any]:
        """Docker's `volume rm`: refused while in use anywhere. Otherwise the volume is
        fenced and marked removed in the store before this returns (the name is free
        then, and a volume created under it starts empty); its objects are deleted in
        the background (`ferry volume ls` shows the progress). control/removals.py."""
        name = req.name
        async with self._lock(name):
            n = self.volumes.count(name)
            if n:
                return plugin.err(f"volume {name!r} is in use on this host ({self.host}) by {n} container(s); "
                                  "remove them first")
            await self._flush_release(name)
            try:
                res = await self.control.volume_remove(name, host_id=self.host)
            except (ControlError, Unreachable) as e:
                return self._control_err(f"cannot remove volume {name!r}", e)
        if res.get("host") == self.host and self._nursery is not None:
            try:
                root = await self._nursery.start(self.removals.job, name, None)
            except RemovalAborted as e:
                return plugin.err(str(e))
            except Exception as e:  # noqa: BLE001 - store or control failure: the message matters
                log.error("host=%s volume=%s removal failed: %s", self.host, name, e)
                return plugin.err(f"cannot remove volume {name!r}: {e}; it stays marked for removal and "
                                  "the agent retries")
        else:
            try:
                res = await self.control.volume_remove(name, host_id=self.host, wait=self.cfg.acquire_wait)
            except (ControlError, Unreachable) as e:
                return self._control_err(f"cannot remove volume {name!r}", e)
            if res.get("status") != "removed":
                return plugin.err(f"volume {name!r} is marked for removal but not removed yet: "
                                  f"{res.get('message', 'no live host fenced it')}")
            root = res.get("root")
        log.info("host=%s volume=%s removed: fenced in the store, objects of %s deleted in the background",
                 self.host, name, root or "(nothing on the store)")
        return plugin.ok()

    async def mount(self, req: plugin.Mount) -> dict[str, Any]:
        name = req.name
        async with self._lock(name):
            mp = str(self.fsd.mountpoint(name))
            rec = self.volumes.get(name)
            linked = await self._linked()
            health = await self.fsd.health(name, host_link=linked) if needs_probe(rec) else None
            action = on_mount(rec, health, host_link=linked)
            if action is Action.UNREACHABLE:
                log.error("host=%s volume=%s mount refused: %s", self.host, name, hostlink.BROKEN)
                return plugin.err(hostlink.BROKEN)
            if action is Action.REFUSE:
                return plugin.err(f"volume {name!r} was taken over by another host after this host's lease "
                                  f"expired; the {self.volumes.count(name)} container(s) still using it here get "
                                  "I/O errors: stop them, then mount it again")
            if action is Action.JOIN:
                self.volumes.step(name, Event.ALIVE)
                if self.volumes.add_id(name, req.id).changed:
                    await self._save()
                    self.kick_heartbeat()
                log.info("host=%s volume=%s mount %s added (%d mount(s) here)", self.host, name,
                         req.id[:12], self.volumes.count(name))
                return plugin.ok(Mountpoint=mp)
            failure = await self._ensure_running(name)
            if failure:
                return plugin.err(failure)
            self.volumes.add_id(name, req.id)
            await self._save()
            self.kick_heartbeat()
            log.info("host=%s volume=%s mounted on %s for %s (epoch %s)", self.host, name, mp, req.id[:12],
                     self.volumes.get(name).epoch)
            return plugin.ok(Mountpoint=mp)

    async def _control_call(self, name: str, what: str, deadline: float, call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`, waiting while the control service (or its state store) is down, until
        `deadline`: a Mount asked during a control outage finishes when control is back."""
        logged = False
        while True:
            try:
                return await call()
            except Unreachable as e:
                why = str(e)
            except ControlError as e:
                if e.code != "unavailable" or not e.message.startswith(protocol.STORE_UNAVAILABLE):
                    raise
                why = e.message
            if trio.current_time() + 1 >= deadline:
                raise Unreachable(f"the control service was unavailable for {self.cfg.control_wait:g}s: {why}")
            if not logged:
                log.warning("host=%s volume=%s %s waits for the control service (%s); up to %gs", self.host,
                            name, what, why, self.cfg.control_wait)
                logged = True
            await trio.sleep(1)

    async def _ensure_running(self, name: str) -> str | None:
        """Acquire the lease and start fsd (volume lock held). None, or why it failed.
        The record is STARTING meanwhile and leaves it whatever happens (cancellation too)."""
        was_lost = self.volumes.get(name).phase is Phase.LOST
        self.volumes.step(name, Event.START)
        outcome = _Start("cancelled", None, False, False)
        try:
            outcome = await self._acquire_and_start(name)
        finally:
            failure = outcome.failure
            if failure is None:
                self.volumes.step(name, Event.STARTED, epoch=outcome.epoch)
            else:
                with trio.CancelScope(shield=True):
                    health = await self.fsd.health(name)
                    event = after_failed_start(health, lease_elsewhere=outcome.lease_elsewhere or was_lost)
                    if event is Event.START_FAILED and health is Health.DEAD:
                        await self.fsd.kill(name)     # a dead daemon of an epoch another host took over
                self.volumes.step(name, event)
        if failure and outcome.acquired and not self.volumes.busy(name):
            await self._release(name, None)    # in use: keep the lease, the monitor retries the remount;
        return failure                         # a daemon left dead: the monitor reseals, then releases

    async def _acquire_and_start(self, name: str) -> _Start:
        """Acquire the lease and start fsd; what happened (see `_Start`)."""
        deadline = trio.current_time() + self.cfg.control_wait
        try:
            vol = await self._control_call(name, "mount", deadline, lambda: self.control.volume_get(name))
        except ControlError as e:
            if e.code == "not_found":
                return _Start(f"volume {name!r} does not exist; create it with: docker volume create -d ferry "
                              f"{name}", None, False, False)
            return _Start(f"cannot mount volume {name!r}: {e.message}", None, False, False)
        except Unreachable as e:
            return _Start(f"cannot mount volume {name!r}: {e}", None, False, False)
        options = dict(vol.get("options") or {})

        async def acquire() -> Any:
            return await self._control_call(
                name, "mount", deadline, lambda: self.control.lease_acquire(
                    name, self.host, wait=max(1.0, min(self.cfg.acquire_wait, deadline - trio.current_time())),
                    in_use_wait=self.cfg.in_use_wait))
        try:
            try:
                res = await acquire()
            except ControlError as e:
                if e.code != "not_found":
                    raise
                # The volume exists, so it is this host the service does not know (its state was
                # lost or restored): register now rather than fail the Mount, then ask again.
                await self.control.host_register(self.host, self.cfg.address, VERSION)
                self.kick_heartbeat()
                res = await acquire()
        except (ControlError, Unreachable) as e:
            return _Start(f"cannot mount volume {name!r}: {getattr(e, 'message', e)}", None, False, False)
        status, owner = res.get("status"), res.get("owner")
        if status == "granted":
            self._granted_at[name] = trio.current_time()
        if status == "busy":
            return _Start(f"volume {name!r} is in use on host {owner}; stop its containers there first"
                          + (f" ({res['message']})" if res.get("message") else "")
                          + (". A Swarm service cannot start a task on another node while the old one runs: "
                             "update it with --update-order stop-first (the default), and give each replica its "
                             "own volume (source=NAME-{{.Task.Slot}})" if self.cfg.in_use_wait > 0 else ""),
                          None, False, True)
        if status != "granted":
            return _Start(f"volume {name!r}: host {owner} did not release it within {self.cfg.acquire_wait:g}s; "
                          "retry, or wait for its lease to expire if that host is down", None, False, True)
        takeover = bool(res.get("takeover"))
        if takeover:
            log.warning("host=%s volume=%s taking over from host %s whose lease expired (its epoch is sealed)",
                        self.host, name, res.get("previous_owner"))
        try:
            if await self.fsd.health(name) is Health.DEAD:
                await self.fsd.kill(name)
            await self.fsd.mkfs_if_missing(name, options)
            await self.fsd.start(name, takeover=takeover, options=options)
        except FsdError as e:
            log.error("host=%s volume=%s %s", self.host, name, e)
            return _Start(str(e), None, True, False)
        return _Start(None, await self.fsd.wait_epoch(name), True, False)

    async def unmount(self, req: plugin.Unmount) -> dict[str, Any]:
        name = req.name
        async with self._lock(name):
            try:
                out = self.volumes.remove_id(name, req.id)
            except UnknownMount as e:
                return plugin.err(str(e))
            await self._save()
            self.kick_heartbeat()
            if not out.stop:
                log.info("host=%s volume=%s mount %s removed (%d left)", self.host, name, req.id[:12],
                         self.volumes.count(name))
                return plugin.ok()
            action = on_last_unmount(self.volumes.get(name))
            if action is Action.STOP_ONLY:
                await self._stop_only(name)
                return plugin.ok()
            if action is Action.RELEASE:
                await self._release(name, None)
                return plugin.ok()
            failure = await self._stop_and_release(name)
            if failure:
                return plugin.err(failure + "; the agent retries in the background")
            return plugin.ok()

    async def _stop_and_release(self, name: str) -> str | None:
        """Last user gone (volume lock held): unmount cleanly, then release the lease."""
        rec = self.volumes.step(name, Event.STOP)
        epoch = rec.epoch
        try:
            await self.fsd.stop(name)
        except FsdError as e:
            log.error("host=%s volume=%s %s", self.host, name, e)
            if await self.fsd.health(name, host_link=await self._linked()) in (
                    Health.RUNNING, Health.HUNG, Health.DETACHED):
                self.volumes.step(name, Event.STOP_FAILED)
                return str(e)           # still serving (busy mountpoint): retried by the monitor
            await self._reseal(name)    # the daemon died while stopping
            epoch = None
        self.volumes.step(name, Event.STOPPED, epoch=epoch)
        log.info("host=%s volume=%s unmounted: committed and released epoch %s", self.host, name, epoch)
        await self._release(name, epoch)
        return None

    async def _stop_only(self, name: str) -> None:
        """Stop the daemon of a volume whose lease another host holds now: nothing to release."""
        try:
            await self.fsd.stop(name)
        except FsdError as e:
            log.error("host=%s volume=%s %s", self.host, name, e)
            await self.fsd.kill(name)
        self.volumes.step(name, Event.FORGOTTEN)
        log.info("host=%s volume=%s stopped its fenced daemon (the lease is another host's)", self.host, name)

    async def _reseal(self, name: str) -> bool:
        """A daemon died without releasing its epoch (volume lock held, lease still ours).
        Mount and unmount once more on the same cache directory: fsd recognises its own
        crashed epoch, seals it and replays (nothing fsync-acknowledged is lost), and the
        clean unmount seals the new epoch with reason `release` - so the next owner, on
        any host, needs no takeover."""
        try:
            await self.fsd.kill(name)
            try:
                options = dict((await self.control.volume_get(name)).get("options") or {})
            except (ControlError, Unreachable):
                options = {}
            await self.fsd.start(name, takeover=False, options=options)
            await self.fsd.stop(name)
        except FsdError as e:
            log.error("host=%s volume=%s its fsd died without releasing the volume and recovering it "
                      "failed: %s; the next owner will need a takeover", self.host, name, e)
            return False
        log.warning("host=%s volume=%s its fsd had died without releasing; remounted and released it "
                    "cleanly", self.host, name)
        return True

    async def _release(self, name: str, epoch: int | None) -> None:
        """Tell control this host gives the lease up (volume lock held). Undelivered, the
        record stays RELEASING and the heartbeat retries it."""
        rec = self.volumes.get(name)
        if rec.phase is not Phase.RELEASING:
            rec = self.volumes.step(name, Event.RELEASE_DUE, epoch=epoch)
        try:
            await self.control.lease_release(name, self.host, epoch)
        except Unreachable as e:
            log.warning("host=%s volume=%s lease release not delivered (%s); retrying", self.host, name, e)
            rec.release_epoch = epoch
            return
        except ControlError as e:
            if e.code == "conflict" and epoch is not None:
                await self._release(name, None)     # epoch mismatch: still ours, release it
                return
            log.warning("host=%s volume=%s lease release refused: %s", self.host, name, e.message)
        self.volumes.step(name, Event.RELEASED)

    async def _flush_release(self, name: str) -> None:
        rec = self.volumes.get(name)
        if rec.phase is Phase.RELEASING:
            await self._release(name, rec.release_epoch)

    async def path(self, req: plugin.Path) -> dict[str, Any]:
        return plugin.ok(Mountpoint=self._mp_if_here(req.name))

    def _mp_if_here(self, name: str) -> str:
        return str(self.fsd.mountpoint(name)) if self.volumes.in_use(name) else ""

    async def get(self, req: plugin.Get) -> dict[str, Any]:
        name = req.name
        try:
            v = await self.control.volume_get(name)
        except ControlError as e:
            if e.code == "not_found":
                return plugin.err(f"volume {name!r} does not exist")
            return plugin.err(f"cannot get volume {name!r}: {e.message}")
        except Unreachable as e:
            if not self.volumes.in_use(name):
                return plugin.err(f"cannot get volume {name!r}: {e}")
            v = {"durability": None, "lease": {"host": self.host}}
        lease = v.get("lease") or {}
        status = {"owner": lease.get("host"), "epoch": lease.get("epoch"),
                  "durability": v.get("durability"), "upload_lag_s": lease.get("upload_lag_s"),
                  "snapshots": sorted(v.get("snapshots") or {})}
        if v.get("labels"):
            status["labels"] = dict(v["labels"])     # given to `ferry volume create --label`
        opts = v.get("options") or {}
        if opts.get("from"):
            status["clone_of"] = opts["from"]
        if opts.get("layout") == "block":
            status.update(layout="block", fs=opts.get("fs", "ext4"), size=opts.get("size", DEFAULT_IMAGE_SIZE))
        if self.volumes.get(name).has_daemon:
            st = await self.fsd.status(name)
            if st is not None:
                status.update(epoch=st.get("epoch"), upload_lag_s=st.get("upload_lag_s"),
                              durability=st.get("durability") or status["durability"])
                if isinstance(st.get("image_size"), int):     # grown by `ferry fs resize` since creation
                    status["size"] = _gib(st["image_size"])
            status["mounts_here"] = self.volumes.count(name)
        created = v.get("created")
        return plugin.ok(Volume=plugin.volume_entry(name, self._mp_if_here(name), status,
                                                    created if isinstance(created, (int, float)) else None))

    async def list_volumes(self, req: plugin.ListVolumes) -> dict[str, Any]:
        snaps: dict[str, list[str]] = {}
        created: dict[str, float] = {}
        try:
            vols = [v for v in await self.control.volume_list()
                    if isinstance(v, dict) and isinstance(v.get("name"), str)]
            names = [v["name"] for v in vols if v.get("state") != "removing"]
            snaps = {v["name"]: sorted(v.get("snapshots") or {}) for v in vols}
            created = {v["name"]: v["created"] for v in vols if isinstance(v.get("created"), (int, float))}
        except (ControlError, Unreachable) as e:
            log.warning("host=%s List answered from local state only: %s", self.host, e)
            names = self.volumes.names()
        return plugin.ok(Volumes=[plugin.volume_entry(n, self._mp_if_here(n),
                                                      {"snapshots": snaps[n]} if n in snaps else None,
                                                      created.get(n))
                                  for n in sorted(names)])

    # ================================================================ background
    async def register(self) -> None:
        res = await self.control.host_register(self.host, self.cfg.address, VERSION)
        held = [x["volume"] for x in res.get("leases", []) if isinstance(x, dict) and "volume" in x]
        log.info("host=%s registered with the control service at %s (holds %d lease(s))", self.host,
                 self.cfg.control, len(held))
        for name in held:
            if not self.volumes.busy(name):
                async with self._lock(name):
                    if not self.volumes.busy(name):
                        log.info("host=%s volume=%s lease held but not mounted here: releasing it",
                                 self.host, name)
                        await self._release(name, None)
        self.registered.set()

    async def _reports(self) -> list[dict[str, Any]]:
        out = []
        for name in self.volumes.active():
            st = await self.fsd.status(name)
            rec = self.volumes.get(name)
            last_gc = None
            if st is not None and rec.has_daemon:
                if isinstance(st.get("epoch"), int):
                    rec.epoch = st["epoch"]
                lag = st.get("upload_lag_s")
                rec.lag = float(lag) if isinstance(lag, (int, float)) and lag >= 0 else None
                last_gc = st.get("last_gc") if isinstance(st.get("last_gc"), dict) else None
            out.append({"name": name, "in_use": rec.in_use, "epoch": rec.epoch, "upload_lag_s": rec.lag,
                        "last_gc": last_gc})
        return out

    async def _retry_releases(self) -> None:
        """Releases control has not heard yet, each under its volume's lock and only
        while still due (a Mount since then superseded it)."""
        for name, _ in self.volumes.pending_releases():
            async with self._lock(name):
                rec = self.volumes.get(name)
                if rec.phase is Phase.RELEASING:
                    await self._release(name, rec.release_epoch)

    async def heartbeat_loop(self) -> None:
        failing = False
        while True:
            try:
                if not self.registered.is_set():
                    await self.register()
                await self._retry_releases()
                asked_at = trio.current_time()
                res = await self.control.host_heartbeat(self.host, await self._reports(),
                                                        self.removals.progress())
                if failing:
                    log.info("host=%s control service reachable again", self.host)
                failing = False
                hb = res.get("heartbeat")
                if isinstance(hb, (int, float)) and hb > 0:
                    self.heartbeat_period = float(hb)
                for m in res.get("moves", []):
                    self._start_move(m.get("volume"), m.get("to"))
                for name in res.get("lost", []):
                    await self._lost(name, asked_at)
            except ControlError as e:
                if e.code == "not_found":        # the service does not know us (state reset): register again
                    self.registered = trio.Event()
                if e.code == "unavailable" and e.message.startswith(protocol.STORE_UNAVAILABLE):
                    if not failing:
                        log.warning("host=%s heartbeat not recorded: %s (mounts keep working; retrying)",
                                    self.host, e.message)
                    failing = True
                else:
                    log.warning("host=%s heartbeat refused: %s", self.host, e.message)
            except Unreachable as e:
                if not failing:
                    log.warning("host=%s heartbeat failed: %s (mounts keep working; retrying)", self.host, e)
                failing = True
            with trio.move_on_after(self.heartbeat_period):
                await self._kick.wait()
            self._kick = trio.Event()

    async def _lost(self, name: str, asked_at: float) -> None:
        """The control service says we no longer hold `name` (taken over after our lease expired).

        The answer describes the lease as it was while the heartbeat `asked_at`
        was on its way. A Mount that was waiting for the lease then (a move,
        a Swarm task whose old task was still stopping) is reported while
        STARTING and may have been granted it since: that answer is stale,
        and acting on it would stop a volume its container just got."""
        async with self._lock(name):
            rec = self.volumes.get(name)
            if not rec.has_daemon or rec.phase is Phase.LOST:
                return
            if rec.phase is Phase.STARTING or self._granted_at.get(name, -math.inf) >= asked_at:
                log.info("host=%s volume=%s: ignoring a heartbeat answer from before this host was granted "
                         "the lease", self.host, name)
                return
            self.volumes.step(name, Event.LEASE_LOST)
            if on_lease_lost(rec) is Action.NOTHING:
                log.error("host=%s volume=%s lease lost: another host took the volume over; this host's "
                          "fsd is fenced at its next commit and its containers get I/O errors. Stop them.",
                          self.host, name)
                return
            log.warning("host=%s volume=%s lease lost while unused here: stopping fsd", self.host, name)
            await self._stop_only(name)

    async def watch_loop(self) -> None:
        await self.registered.wait()
        while True:
            try:
                res = await self.control.host_watch(self.host, timeout=self.cfg.watch_timeout,
                                                    running=self.removals.running(), snap_after=self._snap_seen)
            except ControlError as e:
                if e.code == "not_found":
                    self.registered = trio.Event()
                    self.kick_heartbeat()
                    await self.registered.wait()
                else:
                    log.warning("host=%s watch refused: %s", self.host, e.message)
                    await trio.sleep(self.heartbeat_period)
                continue
            except Unreachable:
                await trio.sleep(self.heartbeat_period)
                continue
            moves = [m for m in res.get("moves", []) if isinstance(m, dict)]
            new = [m for m in moves if not self.volumes.get(str(m.get("volume"))).moving]
            for m in new:
                self._start_move(m.get("volume"), m.get("to"))
            jobs = [j for j in res.get("removals", []) if isinstance(j, dict) and isinstance(j.get("name"), str)
                    and not self.removals.is_running(j["name"], j.get("root"))]
            for j in jobs:
                self._start_removal(j["name"], j.get("root"))
            for sj in res.get("snapshots", []):
                if isinstance(sj, dict) and isinstance(sj.get("seq"), int) and sj["seq"] > self._snap_seen:
                    self._snap_seen = sj["seq"]
                    if self._nursery is not None:
                        self._nursery.start_soon(self.jobs.run, sj)
            if moves and not new and not jobs:
                await trio.sleep(0.2)        # moves in progress: don't spin on the long poll

    def _start_move(self, volume: Any, to: Any) -> None:
        if not isinstance(volume, str) or self._nursery is None:
            return
        rec = self.volumes.get(volume)
        if rec.moving:
            return
        rec.moving = True
        self.volumes.keep(rec)
        self._nursery.start_soon(self._handle_move, volume, str(to))

    def _start_removal(self, name: str, root: str | None) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._removal_job, name, root)

    async def _removal_job(self, name: str, root: str | None) -> None:
        """A removal job handed out by the control service (a CLI `ferry volume rm`,
        or one resumed after a crash): fencing failures are logged, and retried
        after a pause by the next watch."""
        try:
            await self.removals.job(name, root)
        except RemovalAborted as e:
            log.warning("host=%s volume=%s removal aborted: %s", self.host, name, e)
        except Exception as e:  # noqa: BLE001 - never crash the agent
            log.error("host=%s volume=%s fencing for removal failed: %s; retrying in %gs or more", self.host,
                      name, e, self.removals.retry_after)

    async def _handle_move(self, name: str, to: str) -> None:
        """Another host asked for `name`: hand it over if no container uses it here."""
        try:
            async with self._lock(name):
                action = on_move(self.volumes.get(name))
                if action is Action.REFUSE:
                    log.info("host=%s volume=%s move to %s refused: in use here by %d container(s)",
                             self.host, name, to, self.volumes.count(name))
                    try:
                        await self.control.lease_refuse_move(name, self.host)
                    except (ControlError, Unreachable) as e:
                        log.warning("host=%s volume=%s refuse_move failed: %s", self.host, name, e)
                    return
                if action is Action.STOP_RELEASE:
                    failure = await self._stop_and_release(name)
                    if failure:
                        with contextlib.suppress(ControlError, Unreachable):
                            await self.control.lease_refuse_move(name, self.host)
                        return
                elif action is Action.STOP_ONLY:
                    await self._stop_only(name)
                else:
                    await self._release(name, None)
                log.info("host=%s volume=%s handed over to host %s", self.host, name, to)
        finally:
            rec = self.volumes.get(name)
            rec.moving = False
            self.volumes.keep(rec)

    async def _linked(self) -> bool:
        """Whether mounts made under the mount root reach the host (agent/hostlink.py)."""
        if self.marker is None:
            return True
        linked = await trio.to_thread.run_sync(self.marker.mounted)
        if not linked and not self._link_reported:
            log.error("host=%s %s", self.host, hostlink.BROKEN)
            self._link_reported = True
        return linked

    async def monitor_loop(self) -> None:
        while True:
            for name in self.volumes.active():
                await self.check_volume(name)
            self.monitor_rounds += 1
            if self.marker is not None and hostlink.restart_now(await self._linked(), self.volumes.active()):
                self.exit_reason = ("mounts no longer reach the host and no ferry volume is in use here: "
                                    "ending the plugin so that dockerd restarts it with its propagated mount")
                log.warning("host=%s %s", self.host, self.exit_reason)
                if self._nursery is not None:
                    self._nursery.cancel_scope.cancel()
                return
            await trio.sleep(self.cfg.monitor_interval)

    async def check_volume(self, name: str) -> None:
        """Remount a dead daemon still in use; stop a daemon nobody uses (agent/volumes.py decides)."""
        async with self._lock(name):
            health = await self.fsd.health(name, host_link=await self._linked())
            rec = self.volumes.get(name)
            action = on_monitor(rec, health)
            if action is Action.NOTHING:
                if rec.in_use and health is Health.RUNNING and allowed(rec.phase, Event.ALIVE):
                    self.volumes.step(name, Event.ALIVE)
            elif action is Action.WARN_HUNG:
                log.warning("host=%s volume=%s mountpoint does not answer (fsd pid hung?)", self.host, name)
            elif action is Action.REMOUNT:
                log.error("host=%s volume=%s fsd is gone (%s) while %d container(s) use it: detaching the "
                          "dead mount and remounting", self.host, name, health.value, len(rec.ids))
                failure = await self._ensure_running(name)
                if failure:
                    log.error("host=%s volume=%s remount failed: %s (retrying)", self.host, name, failure)
                else:
                    log.warning("host=%s volume=%s remounted (epoch %s)", self.host, name,
                                self.volumes.get(name).epoch)
                    self.kick_heartbeat()
            elif action is Action.STOP_RELEASE:
                log.warning("host=%s volume=%s fsd runs with no mount ID: stopping it", self.host, name)
                await self._stop_and_release(name)
            elif action is Action.RESEAL_RELEASE:
                log.warning("host=%s volume=%s fsd died with no container using it", self.host, name)
                await self._reseal(name)
                self.volumes.step(name, Event.RESEALED)
                await self._release(name, None)
            elif action is Action.STOP_ONLY:
                await self._stop_only(name)
            elif action is Action.FORGET:
                self.volumes.step(name, Event.GONE)

    async def adopt(self) -> None:
        """At start: take over the daemons a previous agent left running."""
        self.volumes = await trio.to_thread.run_sync(self.statefile.load)
        registered = await trio.to_thread.run_sync(self.fsd.registered_volumes)
        for name in sorted(set(registered) | set(self.volumes.names())):
            health = await self.fsd.health(name)
            if health is Health.RUNNING:
                info = await self.fsd.info(name)
                rec = self.volumes.step(name, Event.ADOPTED, epoch=await self.fsd.wait_epoch(name, timeout=2.0))
                log.info("host=%s volume=%s adopted fsd pid %s (epoch %s, %d mount ID(s))", self.host, name,
                         info.pid if info else "?", rec.epoch, len(rec.ids))
            elif self.volumes.in_use(name):
                log.error("host=%s volume=%s has %d mount ID(s) but its fsd is %s: it will be remounted",
                          self.host, name, self.volumes.count(name), health.value)
            elif health is Health.DEAD:
                self.volumes.step(name, Event.FOUND_DEAD)      # the monitor reseals and releases it

    async def engine_loop(self, engine: docker_engine.DockerEngine) -> None:
        """Keep the local dockerd naming this plugin (agent/docker_engine.py).
        Never ends on an error: the engine may start after us, restart, or
        not run at all; only the first failure of a kind is logged."""
        name = self.cfg.socket.stem       # Docker names a legacy plugin after its socket file
        last: str | None = None
        while True:
            try:
                try:
                    listed: list[str] | None = await engine.volume_plugins()
                except docker_engine.EngineError as e:
                    listed = None
                    if last != str(e):
                        log.info("host=%s dockerd at %s does not answer (%s); will try again, Swarm cannot "
                                 "place ferry volumes here until it does", self.host, engine.socket_path, e)
                        last = str(e)
                step = docker_engine.next_step(listed, name)
                if step is docker_engine.Step.ACTIVATE:
                    await engine.list_volumes()
                    if name in await engine.volume_plugins():
                        log.info("host=%s dockerd now lists the %r volume plugin: Swarm can place %s volumes "
                                 "on this node", self.host, name, name)
                        last = None
                        step = docker_engine.Step.LISTED
                    elif last != "not listed":
                        log.warning("host=%s dockerd does not list the %r plugin even after a volume listing; "
                                    "is its plugin directory the one holding %s?", self.host, name,
                                    self.cfg.socket)
                        last = "not listed"
                elif step is docker_engine.Step.LISTED:
                    last = None
            except docker_engine.EngineError as e:
                step = docker_engine.Step.UNREACHABLE
                if last != str(e):
                    log.warning("host=%s dockerd: %s", self.host, e)
                    last = str(e)
            except Exception:  # noqa: BLE001 - a helper must never stop the agent
                step = docker_engine.Step.UNREACHABLE
                log.exception("host=%s checking dockerd's plugin list failed", self.host)
            await trio.sleep(docker_engine.delay_after(step))

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled, or until a managed plugin's agent ends itself (`exit_reason`,
        agent/hostlink.py). Cancelling stops the agent only: mounts keep running."""
        self._trio_token = trio.lowlevel.current_trio_token()
        if self.marker is not None:
            await trio.to_thread.run_sync(self.marker.establish)
        await self.adopt()
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                await n.start(serve_unix, self.cfg.socket, self.handle)
                n.start_soon(self.heartbeat_loop)
                n.start_soon(self.watch_loop)
                n.start_soon(self.monitor_loop)
                if self.engine is not None:
                    n.start_soon(self.engine_loop, self.engine)
                log.info("host=%s agent ready: socket %s, mounts under %s, store %s", self.host,
                         self.cfg.socket, self.cfg.mount_root, self.cfg.store_url)
                task_status.started()
        finally:
            self._nursery = None


def _gib(n: int) -> str:
    """A byte count the way `-o size=` takes it: 10G, 1.5G, 300M."""
    return f"{n / (1 << 30):g}G" if n >= 1 << 30 else f"{n / (1 << 20):g}M"
