"""The control service: a trio TCP server in front of the lease state machine.

Why this shape: `control/leases.py` decides, this module only authenticates,
validates, persists and waits. Every mutation runs under one `trio.Lock`:
decide on the in-memory `Cluster`, write the decision to the state store
(compare-and-swap transaction, in a worker thread - SQLite never blocks the
trio loop), then apply it in memory. A refused or failed request therefore
changes nothing, in memory or on disk. Heartbeats never wait for the disk
or the lock: what they change (liveness, upload lag, the in_use/epoch the
agent reports) is applied at once and the lease records are written behind
in batches (`flush`), which is what lets one service renew thousands of
hosts' leases per second.

Waiting (`lease.acquire` with `wait`, `volume.move`, `host.watch`) is a loop
over "re-check, then sleep until the state changes or a short tick passes"
(the tick catches lease expiry, which is time passing, not a change).
"""
from __future__ import annotations

import hmac
import logging
import ssl
import time
from typing import Any, Awaitable, Callable

import trio

from control import leases, protocol, removals, resize, snapshots
from control.leases import Cluster, Config, Decision, Refused
from control.protocol import FrameBuffer, FrameError, ProtocolError
from control.state import NEW, CasConflict, Op, StateError, StateStore
from control.validate import validate_volume_name, validate_volume_options

log = logging.getLogger("ferry.control")
MAX_AUTH_FAILURES = 5        # per connection, then it is closed


def _vkey(name: str) -> str:
    return f"volumes/{name}"


def _hkey(host_id: str) -> str:
    return f"hosts/{host_id}"


def _lkey(volume: str) -> str:
    return f"leases/{volume}"


def _rkey(root: str) -> str:
    return f"removals/{root}"


class ControlServer:
    def __init__(self, state: StateStore, token: str | None, config: Config | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 version: str = "0.1.0"):
        self.state = state
        # None: no token check - only allowed with mutual TLS (the CLI enforces it).
        self._token = token.encode() if token else None
        self.config = config or Config()
        self.clock = clock
        self.wall = wall
        self.version = version
        self.cluster = Cluster(config=self.config)
        self._revs: dict[str, int] = {}
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self.tick = min(1.0, self.config.ttl / 4)
        self._dirty: set[str] = set()      # leases changed by heartbeats, not yet persisted
        self.flush_interval = 0.5
        self.ops: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "ping": self.op_ping, "volume.create": self.op_volume_create, "volume.get": self.op_volume_get,
            "volume.list": self.op_volume_list, "volume.remove": self.op_volume_remove,
            "volume.move": self.op_volume_move, "volume.resize": self.op_volume_resize,
            "host.register": self.op_host_register,
            "host.heartbeat": self.op_host_heartbeat, "host.list": self.op_host_list,
            "host.watch": self.op_host_watch, "lease.acquire": self.op_lease_acquire,
            "lease.release": self.op_lease_release, "lease.refuse_move": self.op_lease_refuse_move,
            "status": self.op_status, "removal.marked": self.op_removal_marked,
            "removal.aborted": self.op_removal_aborted, "removal.done": self.op_removal_done,
            "removal.list": self.op_removal_list, "snapshot.create": self.op_snapshot_create,
            "snapshot.rm": self.op_snapshot_rm, "snapshot.done": self.op_snapshot_done,
        }

    # ------------------------------------------------------------ state
    async def load(self) -> None:
        """Read every record from the state store (at start, and after a CAS conflict)."""
        def read() -> tuple[list, list, list, list]:
            return (self.state.list("volumes/"), self.state.list("hosts/"), self.state.list("leases/"),
                    self.state.list("removals/"))
        vols, hosts, lease_rows, removal_rows = await trio.to_thread.run_sync(read, limiter=self._limiter)
        self.cluster = Cluster.loaded(
            self.config, [leases.Volume.from_dict(v) for _, v, _ in vols],
            [leases.Host.from_dict(v) for _, v, _ in hosts],
            [leases.Lease.from_dict(v) for _, v, _ in lease_rows], self.clock(),
            [leases.Removal.from_dict(v) for _, v, _ in removal_rows])
        self._revs = {k: r for rows in (vols, hosts, lease_rows, removal_rows) for k, _, r in rows}
        # Snapshot job numbers are soft state; starting them from the wall clock
        # keeps them growing across restarts, which agents rely on (snap_after).
        self.cluster.snap_seq = max(self.cluster.snap_seq, int(self.wall() * 1000))
        log.info("control state loaded: %d volumes, %d hosts, %d leases, %d removals", len(vols), len(hosts),
                 len(lease_rows), len(removal_rows))

    def _ops_for(self, d: Decision) -> list[Op]:
        ops = []
        for v in d.put_volumes:
            ops.append(Op(_vkey(v.name), self._revs.get(_vkey(v.name), NEW), v.to_dict()))
        for h in d.put_hosts:
            ops.append(Op(_hkey(h.host_id), self._revs.get(_hkey(h.host_id), NEW), h.to_dict()))
        for lease in d.put_leases:
            ops.append(Op(_lkey(lease.volume), self._revs.get(_lkey(lease.volume), NEW), lease.to_dict()))
        for name in d.del_volumes:
            if _vkey(name) in self._revs:
                ops.append(Op(_vkey(name), self._revs[_vkey(name)], delete=True))
        for name in d.del_leases:
            if _lkey(name) in self._revs:
                ops.append(Op(_lkey(name), self._revs[_lkey(name)], delete=True))
        for r in d.put_removals:
            ops.append(Op(_rkey(r.root), self._revs.get(_rkey(r.root), NEW), r.to_dict()))
        for root in d.del_removals:
            if _rkey(root) in self._revs:
                ops.append(Op(_rkey(root), self._revs[_rkey(root)], delete=True))
        return ops

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _mutate(self, decide: Callable[[Cluster, float], Decision]) -> Any:
        """Decide, persist (CAS), apply; under the one lock. Refused -> nothing changed."""
        async with self._lock:
            d = decide(self.cluster, self.clock())
            if d.persistent:
                if not await self._persist(d):
                    raise Refused("conflict", "the control state changed during the request; retry it")
            self.cluster.apply(d)
            self._dirty.update(lease.volume for lease in d.lazy_leases)
            if (d.persistent or d.put_moves or d.del_moves or d.lazy_leases or d.progress or d.put_snap_jobs
                    or d.del_snap_jobs):
                self._notify()
            return d.result

    async def _persist(self, d: Decision) -> bool:
        """Write `d` in one CAS transaction (caller holds the lock). False on a
        CAS conflict: someone else changed the state, which is reloaded."""
        try:
            revs = await trio.to_thread.run_sync(self.state.txn, self._ops_for(d), limiter=self._limiter)
        except CasConflict as e:
            log.warning("control state changed underneath us (%s); reloading", e)
            await self.load()
            self._notify()
            return False
        for k, r in revs.items():
            if r:
                self._revs[k] = r
            else:
                self._revs.pop(k, None)
        return True

    def _apply_soft(self, decide: Callable[[Cluster, float], Decision]) -> Any:
        """Decide and apply at once, without the lock, a decision that writes nothing
        synchronously (heartbeats). Safe because deciding and applying happen with no
        await in between; a locked decision applied later simply overrides, and the
        lazy lease writes are re-read from memory when flushed."""
        d = decide(self.cluster, self.clock())
        if d.persistent:
            raise AssertionError("a soft decision must not need synchronous writes")
        self.cluster.apply(d)
        self._dirty.update(lease.volume for lease in d.lazy_leases)
        if d.put_moves or d.del_moves or d.lazy_leases:
            self._notify()
        return d.result

    async def flush(self) -> None:
        """Persist leases changed by heartbeats (in_use, epoch): one transaction per batch."""
        async with self._lock:
            dirty, self._dirty = self._dirty, set()
            current = [self.cluster.leases[v] for v in sorted(dirty) if v in self.cluster.leases]
            if not current:
                return
            try:
                await self._persist(Decision(put_leases=current))
            except StateError as e:
                log.error("cannot persist lease reports (will retry): %s", e)
                self._dirty |= dirty

    async def flusher(self) -> None:
        while True:
            await trio.sleep(self.flush_interval)
            if self._dirty:
                await self.flush()

    async def _wait_change(self, deadline: float) -> None:
        """Sleep until the state changes, a tick passes, or `deadline` (trio clock)."""
        ev = self._changed
        with trio.move_on_at(min(deadline, trio.current_time() + self.tick)):
            await ev.wait()

    async def sweep(self) -> None:
        """Forget expired move requests and log hosts going silent, forever."""
        alive: set[str] = set(self.cluster.hosts)
        while True:
            await trio.sleep(self.tick)
            now = self.clock()
            if any(m.expires <= now for m in self.cluster.moves.values()):
                await self._mutate(leases.expire_moves)
            c = self.cluster
            now_alive = {h for h in c.hosts if c.alive(h, now)}
            for h in sorted(alive - now_alive):
                held = sorted(lease.volume for lease in c.leases.values() if lease.host == h)
                log.warning("host down host=%s: no heartbeat for %gs; its leases expired (volumes: %s)",
                            h, c.config.ttl, ", ".join(held) or "none")
            for h in sorted(now_alive - alive):
                log.info("host up host=%s", h)
            alive = now_alive

    # --------------------------------------------------------------- ops
    async def op_ping(self, a: dict[str, Any]) -> Any:
        return {"version": protocol.VERSION, "server": self.version, "now": self.wall(),
                "ttl": self.config.ttl, "heartbeat": self.config.heartbeat}

    async def op_volume_create(self, a: dict[str, Any]) -> Any:
        try:
            name = validate_volume_name(a["name"])
            options = validate_volume_options(name, a["options"])
        except ValueError as e:
            raise Refused("bad_request", str(e)) from None
        if "from" in options:
            await self._clone_job(name, options, a["labels"], a["wait"])
            return leases.volume_view(self.cluster, self._volume(name), self.clock())
        existed = name in self.cluster.volumes
        v = await self._mutate(lambda c, now: leases.create_volume(c, name, options, a["labels"], self.wall()))
        if not existed:
            log.info("volume created volume=%s options=%s", name, options)
        return leases.volume_view(self.cluster, v, self.clock())

    def _volume(self, name: str) -> leases.Volume:
        v = self.cluster.volumes.get(name)
        if v is None:
            raise Refused("not_found", f"volume {name!r} does not exist (list volumes with: ferry volume ls)")
        return v

    async def op_volume_get(self, a: dict[str, Any]) -> Any:
        return leases.volume_view(self.cluster, self._volume(a["name"]), self.clock())

    async def op_volume_list(self, a: dict[str, Any]) -> Any:
        now = self.clock()
        return [leases.volume_view(self.cluster, v, now) for _, v in sorted(self.cluster.volumes.items())]

    async def op_volume_remove(self, a: dict[str, Any]) -> Any:
        """Mark for removal; with `wait`, until the assigned host fenced it in the
        store (the name is free then; the deletion goes on in the background)."""
        name, requester = a["name"], a["host_id"] or None
        res = await self._mutate(lambda c, now: removals.request_removal(c, name, requester, now))
        log.info("volume removal requested volume=%s by=%s assigned to host=%s", name, requester or "cli",
                 res["host"])
        deadline = trio.current_time() + a["wait"]
        while a["wait"] > 0:
            v = self.cluster.volumes.get(name)
            if v is None or v.removing is None:
                break
            if trio.current_time() >= deadline:
                return {**res, "status": "removing", "host": v.removing or None,
                        "message": f"host {v.removing or '(none alive)'} has not fenced the volume in the "
                                   f"store yet; it stays marked for removal and is finished by a live host"}
            await self._wait_change(deadline)
        v = self.cluster.volumes.get(name)
        if v is not None and v.removing is None:
            raise Refused("busy", f"volume {name!r} is in use on host {res['host']}; nothing was removed")
        if v is not None:
            return res
        jobs = [r for r in self.cluster.removals.values() if r.name == name]
        return {"status": "removed", "host": jobs[-1].host if jobs else res["host"],
                "root": jobs[-1].root if jobs else None}

    async def op_removal_marked(self, a: dict[str, Any]) -> Any:
        name, host, root = a["name"], a["host_id"], a["root"]
        res = await self._mutate(lambda c, now: removals.removal_marked(c, name, host, root, self.wall()))
        log.info("volume removed volume=%s host=%s: fenced in the store (root %s), deleting its objects",
                 name, host, root or "none")
        return res

    async def op_removal_aborted(self, a: dict[str, Any]) -> Any:
        await self._mutate(lambda c, now: removals.removal_aborted(c, a["name"], a["host_id"]))
        log.warning("volume removal aborted volume=%s host=%s: %s", a["name"], a["host_id"], a["reason"])
        return None

    async def op_removal_done(self, a: dict[str, Any]) -> Any:
        res = await self._mutate(lambda c, now: removals.removal_done(c, a["root"], a["host_id"]))
        log.info("volume deleted root=%s host=%s: no object left in the store", a["root"], a["host_id"])
        return res

    async def _clone_job(self, name: str, options: dict[str, str], labels: dict[str, str], wait: float) -> None:
        """`volume create NAME -o from=...`: an agent makes the clone in the
        store; the volume is recorded when it reports success (snapshots.done)."""
        res = await self._mutate(lambda c, now: snapshots.request_clone(c, name, options["from"], options, labels,
                                                                        now, self.wall()))
        if res.get("exists"):
            return
        seq, host, source = res["seq"], res["host"], res["source"]
        log.info("clone requested volume=%s from=%s host=%s", name, source, host)
        answer = await self._answer(name, source, seq, wait,
                                    f"host {host} did not make the clone {name!r} of {source} within {wait:g}s")
        if answer["error"]:
            raise Refused("failed", f"cannot create {name!r} from {source}: {answer['error']}")
        log.info("volume created volume=%s as a clone of %s", name, source)

    async def _answer(self, volume: str, snap: str, seq: int, wait: float, late: str) -> dict[str, Any]:
        """The agent's answer to snapshot/clone job `seq`; after `wait` s the
        job is dropped (a late answer is ignored) and Refused("unavailable")."""
        deadline = trio.current_time() + wait
        while seq not in self.cluster.snap_results:
            if trio.current_time() >= deadline:
                await self._mutate(lambda c, now: snapshots.give_up(c, volume, snap, seq))
                raise Refused("unavailable", f"{late}; nothing was recorded (retry)")
            await self._wait_change(deadline)
        return self.cluster.snap_results.pop(seq)

    async def _snapshot_job(self, a: dict[str, Any], op: str) -> Any:
        """Hand the store part to an agent and wait for its answer."""
        volume, snap = a["volume"], a["snap"]
        res = await self._mutate(lambda c, now: snapshots.request(c, volume, snap, op, now))
        seq, host = res["seq"], res["host"]
        log.info("snapshot %s requested volume=%s snap=%s host=%s", op, volume, snap, host)
        answer = await self._answer(volume, snap, seq, a["wait"], f"host {host} did not {op} snapshot {snap!r} "
                                                                  f"of {volume!r} within {a['wait']:g}s")
        if answer["error"]:
            raise Refused("failed", f"host {host}: {answer['error']}")
        return {"volume": volume, "snap": snap, "host": host, "position": answer["position"]}

    async def op_snapshot_create(self, a: dict[str, Any]) -> Any:
        return await self._snapshot_job(a, snapshots.CREATE)

    async def op_snapshot_rm(self, a: dict[str, Any]) -> Any:
        return await self._snapshot_job(a, snapshots.REMOVE)

    async def op_snapshot_done(self, a: dict[str, Any]) -> Any:
        return await self._mutate(lambda c, now: snapshots.done(c, a["volume"], a["snap"], a["host_id"], a["seq"],
                                                                a["error"], a["position"], self.wall(), a["note"]))

    async def op_volume_resize(self, a: dict[str, Any]) -> Any:
        """Record a block volume's new size; its live holder, if any, grows it
        online first (control/resize.py)."""
        name = a["name"]
        res = await self._mutate(lambda c, now: resize.request(c, name, a["size"], now))
        log.info("resize requested volume=%s size=%s: %s", name, res["size"], res["status"])
        if res["status"] != "pending":
            return {"volume": name, **res}
        host = res["host"]
        answer = await self._answer(name, resize.JOB_KEY, res["seq"], a["wait"],
                                    f"host {host} did not grow volume {name!r} within {a['wait']:g}s")
        if answer["error"]:
            raise Refused("failed", f"host {host}: {answer['error']}")
        log.info("volume resized volume=%s size=%d host=%s", name, res["size"], host)
        return {"volume": name, "status": "grown", "size": res["size"], "host": host, "note": answer.get("note")}

    async def op_removal_list(self, a: dict[str, Any]) -> Any:
        now = self.clock()
        return [leases.removal_view(self.cluster, r, now) for _, r in sorted(self.cluster.removals.items())]

    async def op_volume_move(self, a: dict[str, Any]) -> Any:
        name, to, wait = a["name"], a["to"], a["wait"]
        res = await self._mutate(lambda c, now: leases.request_move(c, name, to, now, wait))
        log.info("move requested volume=%s to=%s: %s", name, to, res["status"])
        if res["status"] != "pending":
            return res
        seq, owner = res["move_seq"], res["owner"]
        deadline = trio.current_time() + wait
        while True:
            c = self.cluster
            self._volume(name)
            lease = c.leases.get(name)
            if lease is None or lease.host != owner:
                return {"status": "released", "owner": None if lease is None else lease.host, "from": owner}
            if not c.alive(owner, self.clock()):
                return {"status": "free", "owner": None,
                        "message": f"host {owner!r} stopped heartbeating; its lease expired"}
            m = c.moves.get(name)
            if m is None or m.seq != seq:
                return {"status": "busy", "owner": owner,
                        "message": f"host {owner!r} refused to release volume {name!r} (in use there)"}
            if trio.current_time() >= deadline:
                return {**res, "message": f"host {owner!r} did not answer within {wait:g}s"}
            await self._wait_change(deadline)

    async def _await_owner_fate(self, vol: str, host: str, busy: dict[str, Any], wait: float) -> dict[str, Any]:
        """The volume is in use on its owner. A live owner proves it with its
        next heartbeat (then: busy, within about one heartbeat period); a dead
        one stays silent until its lease expires (then: take over, with the
        storage-level seal). This is what makes a Mount issued right after a
        host died succeed after the TTL instead of failing at once."""
        owner = busy["owner"]
        c = self.cluster
        heard_before = c.last_heard.get(owner)
        deadline = trio.current_time() + wait
        logged = False
        while trio.current_time() < deadline:
            await self._wait_change(deadline)
            c, now = self.cluster, self.clock()
            lease = c.leases.get(vol)
            if lease is None or lease.host != owner or not c.alive(owner, now):
                res = await self._mutate(lambda c, now: leases.acquire(c, vol, host, now, 0.0))
                self._log_acquire(vol, host, res)
                return res
            if c.last_heard.get(owner) != heard_before:
                return busy       # it spoke up: really in use there
            if not logged and c.suspect(owner, now):
                log.info("volume=%s: owner %s is silent; host %s waits for its lease to expire", vol, owner, host)
                logged = True
        return busy

    async def op_host_register(self, a: dict[str, Any]) -> Any:
        host = a["host_id"]
        res = await self._mutate(lambda c, now: leases.register_host(c, host, a["address"], a["version"],
                                                                     now, self.wall()))
        log.info("host registered host=%s address=%s version=%s holding %d lease(s)", host, a["address"],
                 a["version"], len(res["leases"]))
        return res

    async def op_host_heartbeat(self, a: dict[str, Any]) -> Any:
        reports = [leases.VolumeReport(name=r["name"], in_use=r["in_use"], epoch=r["epoch"],
                                       upload_lag_s=r["upload_lag_s"], last_gc=r["last_gc"]) for r in a["volumes"]]
        progress = [leases.RemovalProgress(root=p["root"], deleted=p["deleted"], total=p["total"],
                                           bytes=p["bytes"]) for p in a["removals"]]
        host = a["host_id"]
        res = self._apply_soft(lambda c, now: leases.heartbeat(c, host, reports, now, progress))
        if res["lost"]:
            log.warning("host %s reports volumes it does not hold (taken over or removed): %s", host,
                        ", ".join(f"volume={v}" for v in res["lost"]))
        return res

    async def op_host_list(self, a: dict[str, Any]) -> Any:
        now = self.clock()
        held = leases.held_by(self.cluster)
        return [leases.host_view(self.cluster, h, now, held) for _, h in sorted(self.cluster.hosts.items())]

    async def op_host_watch(self, a: dict[str, Any]) -> Any:
        host = a["host_id"]
        if host not in self.cluster.hosts:
            raise Refused("not_found", f"host {host!r} is not registered; register it first")
        deadline = trio.current_time() + a["timeout"]
        running = {(j["name"], j["root"]) for j in a["running"]}
        while True:
            jobs = await self._mutate(lambda c, now: removals.claim_jobs(c, host, now))
            moves = self.cluster.moves_for(host, self.clock())
            new_jobs = [j for j in jobs if (j["name"], j["root"]) not in running]
            snaps = [j for j in snapshots.jobs_for(self.cluster, host) if j["seq"] > a["snap_after"]]
            if moves or new_jobs or snaps or trio.current_time() >= deadline:
                return {"moves": moves, "removals": jobs, "snapshots": snaps}
            await self._wait_change(deadline)

    async def op_lease_acquire(self, a: dict[str, Any]) -> Any:
        vol, host, wait = a["volume"], a["host_id"], a["wait"]
        res = await self._mutate(lambda c, now: leases.acquire(c, vol, host, now, wait))
        self._log_acquire(vol, host, res)
        if res["status"] == "busy" and wait > 0 and res.get("owner") in self.cluster.hosts:
            res = await self._await_owner_fate(vol, host, res, wait)
        if res["status"] != "pending" or wait <= 0:
            return res
        seq = res["move_seq"]
        deadline = trio.current_time() + wait
        while True:
            await self._wait_change(deadline)
            c, now = self.cluster, self.clock()
            self._volume(vol)
            lease = c.leases.get(vol)
            if lease is None or lease.host is None or lease.host == host or not c.alive(lease.host, now):
                res = await self._mutate(lambda c, now: leases.acquire(c, vol, host, now, 0.0))
                self._log_acquire(vol, host, res)
                return res
            m = c.moves.get(vol)
            if m is None or m.seq != seq or m.to != host or lease.in_use:
                res = {"status": "busy", "owner": lease.host, "takeover": False, "epoch": lease.epoch,
                       "generation": lease.generation,
                       "message": f"volume {vol!r} is in use on host {lease.host!r} (it refused the move)"}
                self._log_acquire(vol, host, res)
                return res
            if trio.current_time() >= deadline:
                return {**res, "message": f"host {lease.host!r} did not answer the move within {wait:g}s; "
                                          "retry, or wait for its lease to expire if it is down"}

    def _log_acquire(self, vol: str, host: str, res: dict[str, Any]) -> None:
        log.info("lease %s volume=%s host=%s owner=%s takeover=%s generation=%s", res["status"], vol, host,
                 res.get("owner"), res.get("takeover"), res.get("generation"))

    async def op_lease_release(self, a: dict[str, Any]) -> Any:
        res = await self._mutate(lambda c, now: leases.release(c, a["volume"], a["host_id"], a["epoch"], now))
        if res["released"]:
            log.info("lease released volume=%s host=%s epoch=%s", a["volume"], a["host_id"], a["epoch"])
        return None

    async def op_lease_refuse_move(self, a: dict[str, Any]) -> Any:
        await self._mutate(lambda c, now: leases.refuse_move(c, a["volume"], a["host_id"], now))
        log.info("move refused volume=%s host=%s", a["volume"], a["host_id"])
        return None

    async def op_status(self, a: dict[str, Any]) -> Any:
        return leases.status_view(self.cluster, self.clock())

    # --------------------------------------------------------- requests
    async def handle(self, body: bytes) -> tuple[dict[str, Any], bool]:
        """One frame body -> (response, authenticated). Never raises."""
        rid = None
        try:
            req = protocol.parse_request(body)
            rid = req.id
            if self._token is not None and not hmac.compare_digest(req.token.encode(), self._token):
                raise ProtocolError("unauthorized", "wrong or missing cluster token: pass the cluster's token "
                                    "with --token-file or FERRY_TOKEN", rid)
            args = protocol.check_args(req)
            result = await self.ops[req.op](args)
            return protocol.ok_response(rid, result), True
        except ProtocolError as e:
            return protocol.error_response(e.id, e.code, e.message), e.code != "unauthorized"
        except Refused as e:
            return protocol.error_response(rid, e.code, e.message), True
        except StateError as e:
            log.error("state store failure: %s", e)
            return protocol.error_response(rid, "internal", f"control state store failed: {e}"), True
        except Exception as e:  # a bug: answer and log, never crash the service
            log.exception("internal error handling a request")
            return protocol.error_response(rid, "internal", f"internal error: {type(e).__name__}: {e}"), True

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one connection: one request at a time, until EOF or garbage."""
        buf = FrameBuffer()
        failures = 0
        try:
            while True:
                try:
                    body = buf.next_frame()
                except FrameError as e:
                    await stream.send_all(protocol.encode_frame(protocol.error_response(None, "bad_request", str(e))))
                    return
                if body is None:
                    data = await stream.receive_some(1 << 16)
                    if not data:
                        if buf.pending:
                            log.debug("connection closed inside a frame (%d bytes dropped)", buf.pending)
                        return
                    buf.feed(data)
                    continue
                resp, authed = await self.handle(body)
                try:
                    frame = protocol.encode_frame(resp)
                except (FrameError, TypeError, ValueError) as e:
                    frame = protocol.encode_frame(protocol.error_response(resp.get("id"), "internal",
                                                                          f"response not encodable: {e}"))
                await stream.send_all(frame)
                if not authed:
                    failures += 1
                    if failures >= MAX_AUTH_FAILURES:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def serve(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load state, listen, serve forever. task_status.started(port)."""
        await self.load()

        async def handler(stream: trio.SocketStream) -> None:
            if ssl_context is not None:
                tls = trio.SSLStream(stream, ssl_context, server_side=True)
                try:
                    with trio.fail_after(10):
                        await tls.do_handshake()
                except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError) as e:
                    log.info("TLS handshake failed: %s", e)
                    await trio.aclose_forcefully(stream)
                    return
                await self.handle_stream(tls)
            else:
                await self.handle_stream(stream)

        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
            bound = listeners[0].socket.getsockname()[1]
            nursery.start_soon(self.sweep)
            nursery.start_soon(self.flusher)
            nursery.start_soon(trio.serve_listeners, handler, listeners)
            log.info("control service listening on %s:%d (%s), lease TTL %gs, heartbeat %gs", host, bound,
                     "TLS" if ssl_context else "plain TCP", self.config.ttl, self.config.heartbeat)
            task_status.started(bound)


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """TLS for the server; with `client_ca`, clients must present a certificate it
    signed (mutual TLS), which authenticates them even without the cluster token."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
