"""The control service: a trio TCP server in front of the lease state machine.

Why this shape: `control/leases.py` decides, this module only authenticates,
validates, persists and waits. Any number of replicas may serve one cluster
(over etcd; SQLite allows one), and none of them is the only writer: each
keeps a copy of the shared state (`Cluster`) that its store's watch keeps
current (`follow`), and every mutation runs as decide on the copy -> write
the decision as one compare-and-swap transaction -> apply it to the copy.
When the transaction fails its compare (another replica changed a record
the decision read), the replica waits until its watch has caught up with
that change and decides again. A refused or failed request therefore
changes nothing, in memory or in the store. control/records.py says which
key holds what.

Heartbeats never take the mutation lock: what they change is applied at
once, and the host's liveness record (`live/<host>`) is written by a group
commit that carries every heartbeat that arrived meanwhile in one
transaction, which is what lets a replica renew thousands of hosts' leases
per second; the in_use/epoch facts of their leases are written behind in
batches (`flush`).

Waiting (`lease.acquire` with `wait`, `volume.move`, `host.watch`) is a loop
over "re-check, then sleep until the state changes or a short tick passes"
(the tick catches lease expiry, which is time passing, not a change).
"""
from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from control import leases, protocol, records, recover, removals, resize, snapshots, waits
from control.leases import Cluster, Config, Decision, Refused
from control.listener import Limits, Listener
from control.metrics import ClusterGauges, ControlMetrics, cluster_gauges
from control.protocol import ProtocolError
from control.state import CasConflict, Compacted, Event, Op, StateError, StateStore
from control.validate import validate_volume_name, validate_volume_options
from control.web import status_document

T = TypeVar("T")
log = logging.getLogger("ferry.control")
log.addFilter(protocol.EscapeArgs())       # callers' strings never forge a log line
MAX_CONFLICT_RETRIES = 8     # decide again after a lost compare-and-swap, then answer `conflict`
MAX_TXN_OPS = 100            # etcd's default --max-txn-ops is 128
COMPACT_PERIOD = 300.0       # the store keeps this much history (seconds) for watches that fall behind
UNREAD_ANSWER_TTL = 60.0     # a job's answer its requester never read (its replica died) is dropped
JOB_TTL = protocol.MAX_WAIT + 60.0   # a job nobody can still be waiting for (requests wait at most MAX_WAIT)


class _LiveBatch:
    """One group commit of liveness records: its waiters learn its outcome."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}
        self.done = trio.Event()
        self.error: StateError | None = None


def _give_up(volume: str, snap: str, seq: int, c: Cluster, now: float) -> Decision:
    """Decider (with the job bound first): drop a snapshot job nobody waits for any more."""
    return snapshots.give_up(c, volume, snap, seq)


def _drop_answers(seqs: list[int], c: Cluster, now: float) -> Decision:
    """Decider (with the answers bound first): drop job answers nobody read."""
    return Decision(del_results=seqs)


class ControlServer:
    def __init__(self, state: StateStore, token: str | None, config: Config | None = None,
                 clock: Callable[[], float] = trio.current_time, wall: Callable[[], float] = time.time,
                 version: str = "0.1.0", limits: Limits | None = None):
        self.state = state
        # None: no token check - only allowed with mutual TLS (the CLI enforces it).
        self._token = token.encode() if token else None
        self.config = config or Config()
        self.clock = clock
        self.wall = wall
        self.version = version
        self.cluster = Cluster(config=self.config)
        self._revs: dict[str, int] = {}        # key -> revision of the row the copy holds
        self._tombs: dict[str, int] = {}       # key -> revision of our own delete, until the watch passes it
        self._watched = 0                      # the copy holds every change up to this store revision
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self.tick = min(1.0, self.config.ttl / 4)
        self._dirty: set[str] = set()      # leases changed by heartbeats, not yet persisted
        self.flush_interval = 0.5
        self.listener = Listener(self.handle, limits, open_access=self._token is None)
        self._trio_token: trio.lowlevel.TrioToken | None = None      # set while serving
        self.metrics = ControlMetrics(self._gauges_any_thread)
        self._counted_grants: dict[str, Any] = {}      # volume -> generation of the grant last counted
        self._live_next = _LiveBatch()
        self._live_wake = trio.Event()
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
            "volume.recover": self.op_volume_recover, "removal.recover": self.op_removal_recover,
        }

    # ------------------------------------------------------------ state
    async def load(self) -> None:
        """Read the whole state from the store (at start, and when the watch's
        history was compacted away). Hosts count as heard now: a replica that
        just (re)loaded has seen no silence."""
        snap = await self.state.scan("")
        rows = [r for r in snap.rows if r[0].startswith(records.PREFIXES)]
        self.cluster = records.cluster_from_rows(self.config, rows, self.clock(), self.wall())
        self._revs = {k: r for k, _, r in rows}
        self._tombs = {}
        self._watched = snap.revision
        c = self.cluster
        log.info("control state loaded from %s at revision %d: %d volumes, %d hosts, %d leases, %d removals",
                 self.state.kind, snap.revision, len(c.volumes), len(c.hosts), len(c.leases), len(c.removals))
        self._notify()

    def _apply_event(self, ev: Event) -> None:
        known = max(self._revs.get(ev.key, 0), self._tombs.get(ev.key, 0))
        if ev.revision <= known:
            return                      # our own write, or older than what the copy holds
        records.apply_row(self.cluster, ev.key, ev.value, self.clock())
        if ev.deleted:
            self._revs.pop(ev.key, None)
        else:
            self._revs[ev.key] = ev.revision

    async def follow(self) -> None:
        """Keep the copy current from the store's watch, forever."""
        while True:
            try:
                async with contextlib.aclosing(self.state.watch("", self._watched)) as batches:
                    async for batch in batches:
                        if not batch:
                            self._store_trouble()
                            continue
                        for ev in batch:
                            self._apply_event(ev)
                        self._watched = max(self._watched, batch[-1].revision)
                        if self._tombs:
                            self._tombs = {k: r for k, r in self._tombs.items() if r > self._watched}
                        self._notify()
            except Compacted as e:
                log.warning("control state watch fell behind (%s); reloading", e)
            except StateError as e:
                log.error("control state watch failed (%s); reloading", e)
                self._store_trouble()
                await trio.sleep(self.tick)
            try:
                async with self._lock:
                    await self.load()
            except StateError as e:
                log.error("cannot reload control state (%s); retrying", e)
                self._store_trouble()
                await trio.sleep(self.tick)

    def _store_trouble(self) -> None:
        """The store cannot be reached: while it cannot, no host can prove it
        is alive, so none is counted silent (no lease expires because the
        store was down; a host that is really gone expires one TTL after)."""
        now = self.clock()
        for h in self.cluster.hosts:
            self.cluster.last_heard[h] = now

    async def _refresh(self, keys: list[str]) -> None:
        """Read `keys` from the store and put what is newer than the copy's into it:
        the copy catches up on exactly what a decision depends on, without waiting
        for the watch (whose revisions, on an etcd shared with other prefixes, need
        not reach the store's global revision soon)."""
        for key in keys:
            got = await self.state.get(key)
            known = max(self._revs.get(key, 0), self._tombs.get(key, 0))
            if got is None:
                if key in self._revs:          # deleted since: the watch will say when; the copy follows now
                    records.apply_row(self.cluster, key, None, self.clock())
                    self._tombs[key] = self._revs.pop(key)
            elif got[1] > known:
                records.apply_row(self.cluster, key, got[0], self.clock())
                self._revs[key] = got[1]
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _mutate(self, decide: Callable[[Cluster, float], Decision]) -> Any:
        """Decide, persist (CAS), apply; under the one lock. Refused -> nothing changed.
        A lost compare-and-swap is decided again once the copy has caught up."""
        for _ in range(MAX_CONFLICT_RETRIES):
            async with self._lock:
                now = self.clock()
                d = decide(self.cluster, now)
                if not (d.persistent or d.silent):
                    return self._apply(d)
                ops = records.ops_for(self.cluster, d, self._revs, now)
                try:
                    rev = await self.state.txn(ops)
                except CasConflict as e:
                    log.info("control state changed by another writer (%s); deciding again", e)
                    self.metrics.cas_conflicts.inc()
                    conflict = e
                except StateError:
                    self._store_trouble()
                    raise
                else:
                    newer = self._applied(ops, rev)
                    result = self._apply(d)
                    if newer:           # the watch brought later writes of these keys meanwhile: keep them
                        await self._refresh(newer)
                    return result
                await self._refresh([conflict.key])
        raise Refused("conflict", "the control state kept changing during the request; retry it")

    def _applied(self, ops: list[Op], rev: int) -> list[str]:
        """Note our own write at `rev`; never move a key's revision backwards. Returns
        the keys the copy already holds a later write of (seen by the watch meanwhile)."""
        newer = []
        for op in ops:
            if op.check:
                continue
            if max(self._revs.get(op.key, 0), self._tombs.get(op.key, 0)) > rev:
                newer.append(op.key)
            elif op.delete:
                self._revs.pop(op.key, None)
                self._tombs[op.key] = rev
            else:
                self._revs[op.key] = rev
        return newer

    def _apply(self, d: Decision) -> Any:
        self.cluster.apply(d)
        self._dirty.update(lease.volume for lease in d.lazy_leases)
        if d.changes_anything or d.progress or d.put_snap_jobs or d.del_snap_jobs or d.snap_results:
            self._notify()
        return d.result

    def _apply_soft(self, decide: Callable[[Cluster, float], Decision]) -> Decision:
        """Decide and apply at once, without the lock, a decision that writes nothing
        synchronously (heartbeats). Safe because deciding and applying happen with no
        await in between; a locked decision applied later simply overrides, and the
        lazy lease writes are re-read from memory when flushed."""
        d = decide(self.cluster, self.clock())
        if d.persistent:
            raise AssertionError("a soft decision must not need synchronous writes")
        self._apply(d)
        return d

    async def _write_live(self, host: str, value: Any) -> None:
        """Record `host`'s heartbeat in the store (group commit with every other
        heartbeat waiting); StateError when the store could not be written."""
        batch = self._live_next
        batch.records[host] = value
        self._live_wake.set()
        await batch.done.wait()
        if batch.error is not None:
            raise batch.error

    async def live_writer(self) -> None:
        """Write liveness records in batches, one transaction per batch, forever."""
        while True:
            await self._live_wake.wait()
            self._live_wake = trio.Event()
            batch, self._live_next = self._live_next, _LiveBatch()
            ops = [Op(records.livekey(h), -1, v) for h, v in batch.records.items()]
            started = self.clock()
            try:
                for i in range(0, len(ops), MAX_TXN_OPS):     # etcd refuses more than 128 ops per txn
                    chunk = ops[i:i + MAX_TXN_OPS]
                    newer = self._applied(chunk, await self.state.txn(chunk))
                    if newer:
                        await self._refresh(newer)
                if self.clock() - started > self.config.heartbeat:
                    # Heartbeats could not be recorded in time: other hosts' may not
                    # have been either, so silence seen meanwhile proves nothing.
                    log.warning("recording heartbeats took %.1fs; no host counts as silent meanwhile",
                                self.clock() - started)
                    self._store_trouble()
            except Exception as e:  # noqa: BLE001 - every waiter must learn the outcome, whatever it is
                batch.error = e if isinstance(e, StateError) else StateError(f"{type(e).__name__}: {e}")
                self._store_trouble()
                log.error("cannot record heartbeats of %d host(s): %s", len(ops), e)
            finally:
                batch.done.set()

    async def flush(self) -> None:
        """Persist leases changed by heartbeats (in_use, epoch): one transaction per batch.
        A batch that lost a compare is dropped: the watch brings the newer lease,
        and the host's next heartbeat reports its facts again."""
        async with self._lock:
            dirty, self._dirty = self._dirty, set()
            current = [self.cluster.leases[v] for v in sorted(dirty) if v in self.cluster.leases]
            for i in range(0, len(current), MAX_TXN_OPS // 2):    # a compare and a put per lease
                chunk = current[i:i + MAX_TXN_OPS // 2]
                ops = records.ops_for(self.cluster, Decision(put_leases=chunk), self._revs, self.clock())
                try:
                    newer = self._applied(ops, await self.state.txn(ops))
                    if newer:
                        await self._refresh(newer)
                except CasConflict as e:
                    log.info("lease reports crossed another writer (%s); the next heartbeats repeat them", e)
                except StateError as e:
                    log.error("cannot persist lease reports (will retry): %s", e)
                    self._dirty |= {lease.volume for lease in chunk}

    async def flusher(self) -> None:
        while True:
            await trio.sleep(self.flush_interval)
            if self._dirty:
                await self.flush()

    async def compactor(self, period: float = COMPACT_PERIOD) -> None:
        """Let the store forget history older than one period, forever. etcd keeps
        every version of every key until compacted, and heartbeats rewrite keys
        all the time; a replica whose watch is a whole period behind reloads."""
        marks: list[int] = []
        while True:
            await trio.sleep(period)
            marks.append(self._watched)
            if len(marks) > 1:
                rev = marks.pop(0)
                try:
                    await self.state.compact(rev)
                except Compacted:
                    pass            # another replica did it
                except StateError as e:
                    log.info("cannot compact the control state's history yet: %s", e)

    async def _supervised(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop forever: a bug in it is logged and the loop
        started again, never the end of the service."""
        while True:
            try:
                await task()
            except Exception:
                log.exception("control background task %s failed; restarting it", task.__name__)
                await trio.sleep(self.tick)

    async def _wait_change(self, deadline: float) -> None:
        """Sleep until the state changes, a tick passes, or `deadline`."""
        ev = self._changed
        with trio.move_on_at(min(deadline, self.clock() + self.tick)):
            await ev.wait()

    async def _wait_for(self, check: Callable[[Cluster, float], T | None], wait: float) -> T | None:
        """The one wait of every waiting request: `check(cluster, now)` again each time
        the state changes or a tick passes (the tick catches expiry, which is time
        passing, not a change), until it answers or `wait` seconds are over (None)."""
        deadline = self.clock() + wait
        while True:
            res = check(self.cluster, self.clock())
            if res is not None or self.clock() >= deadline:
                return res
            await self._wait_change(deadline)

    async def sweep(self) -> None:
        """Forget expired move requests and log hosts going silent, forever."""
        alive: set[str] = set(self.cluster.hosts)
        answers_seen: dict[int, float] = {}
        jobs_seen: dict[int, float] = {}
        while True:
            await trio.sleep(self.tick)
            now = self.clock()
            if any(m.expires <= now for m in self.cluster.moves.values()):
                try:
                    await self._mutate(leases.expire_moves)
                except (Refused, StateError) as e:
                    log.info("expired moves not dropped yet: %s", e)
            for seq in self.cluster.snap_results:
                answers_seen.setdefault(seq, now)
            answers_seen = {s: t for s, t in answers_seen.items() if s in self.cluster.snap_results}
            stale = [s for s, t in answers_seen.items() if now - t > UNREAD_ANSWER_TTL]
            for j in self.cluster.snap_jobs.values():
                jobs_seen.setdefault(j.seq, now)
            live_jobs = {j.seq: j for j in self.cluster.snap_jobs.values()}
            jobs_seen = {s: t for s, t in jobs_seen.items() if s in live_jobs}
            for s in [s for s, t in jobs_seen.items() if now - t > JOB_TTL]:
                j = live_jobs[s]        # nobody waits for it any more (its requester's replica died)
                try:
                    await self._mutate(functools.partial(_give_up, j.volume, j.snap, j.seq))
                    log.warning("job %s of volume=%s (%s) dropped: unanswered for %gs", j.seq, j.volume, j.op,
                                JOB_TTL)
                except (Refused, StateError) as e:
                    log.info("stale job not dropped yet: %s", e)
            if stale:
                try:
                    await self._mutate(functools.partial(_drop_answers, stale))
                except (Refused, StateError) as e:
                    log.info("unread job answers not dropped yet: %s", e)
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
        if a["wait"] > 0 and await self._wait_for(lambda c, now: waits.removal_outcome(c, name), a["wait"]) is None:
            v = self._volume(name)
            return {**res, "status": "removing", "host": v.removing or None,
                    "message": f"host {v.removing or '(none alive)'} has not fenced the volume in the "
                               f"store yet; it stays marked for removal and is finished by a live host"}
        left = self.cluster.volumes.get(name)
        if left is not None and left.removing is None:
            raise Refused("busy", f"volume {name!r} is in use on host {res['host']}; nothing was removed")
        if left is not None:
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
        if res["done"]:
            log.info("volume deleted root=%s host=%s: no object left in the store", a["root"], a["host_id"])
        else:
            log.info("removal.done from host=%s for root=%s, which has no deletion job (done already?)",
                     a["host_id"], a["root"])
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
        if await self._wait_for(lambda c, now: waits.job_answer(c, seq), wait) is None:
            await self._mutate(lambda c, now: snapshots.give_up(c, volume, snap, seq))
            raise Refused("unavailable", f"{late}; nothing was recorded (retry)")
        answer = self.cluster.snap_results.pop(seq)
        with contextlib.suppress(StateError, Refused):
            await self._mutate(lambda c, now: Decision(del_results=[seq]))
        return answer

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

    async def op_volume_recover(self, a: dict[str, Any]) -> Any:
        """`ferry control recover`: a volume found in the store (control/recover.py)."""
        try:
            name = validate_volume_name(a["name"])
            options = validate_volume_options(name, a["options"])
        except ValueError as e:
            raise Refused("bad_request", str(e)) from None
        snaps = recover.check_snapshots(a["snapshots"])
        res = await self._mutate(lambda c, now: recover.recover_volume(c, name, options, a["created"], snaps,
                                                                        self.wall()))
        if res["status"] in (recover.RECOVERED, recover.UPDATED):
            log.warning("volume %s from the store volume=%s options=%s snapshots=%d", res["status"], name,
                        options, len(snaps))
        return res

    async def op_removal_recover(self, a: dict[str, Any]) -> Any:
        """`ferry control recover`: a deletion in progress found in the store."""
        try:
            name = validate_volume_name(a["name"])
        except ValueError as e:
            raise Refused("bad_request", str(e)) from None
        root = a["root"]
        if root != name and not root.startswith(name + "/"):
            raise Refused("bad_request", f"root {root!r} is not a root of volume {name!r}")
        res = await self._mutate(lambda c, now: recover.recover_removal(c, name, root, self.wall()))
        if res["status"] == recover.RECOVERED:
            log.warning("removal recovered from the store volume=%s root=%s: a live host finishes it", name, root)
        return res

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
        out = await self._wait_for(lambda c, now: waits.move_outcome(c, name, owner, seq, now), wait)
        self._volume(name)
        return out or {**res, "message": f"host {owner!r} did not answer within {wait:g}s"}

    async def _await_owner_fate(self, vol: str, host: str, busy: dict[str, Any], wait: float) -> dict[str, Any]:
        """The volume is in use on its owner. A live owner proves it with its
        next heartbeat (then: busy, within about one heartbeat period); a dead
        one stays silent until its lease expires (then: take over, with the
        storage-level seal). This is what makes a Mount issued right after a
        host died succeed after the TTL instead of failing at once."""
        owner = busy["owner"]
        beat_before = self._revs.get(records.livekey(owner), 0)
        logged = False

        def fate(c: Cluster, now: float) -> str | None:
            nonlocal logged
            out = waits.owner_fate(c, vol, owner, beat_before, self._revs.get(records.livekey(owner), 0), now)
            if out is None and not logged and c.suspect(owner, now):
                log.info("volume=%s: owner %s is silent; host %s waits for its lease to expire", vol, owner, host)
                logged = True
            return out
        if await self._wait_for(fate, wait) == waits.ACQUIRE:
            res = await self._mutate(lambda c, now: leases.acquire(c, vol, host, now, 0.0))
            self._log_acquire(vol, host, res)
            return res
        return busy        # it spoke up (really in use there), or the wait is over

    def _in_use_by(self, vol: str, owner: Any) -> bool:
        lease = self.cluster.leases.get(vol)
        return lease is not None and lease.host == owner and lease.in_use

    async def _await_in_use_end(self, vol: str, host: str, busy: dict[str, Any], wait: float,
                                in_use_wait: float) -> dict[str, Any]:
        """The volume is in use on a live owner and the requester may wait
        `in_use_wait` s for that to end (a Swarm task moving: its new Mount
        comes while the old task is still stopping). Woken by the owner's
        release, then asked again (the usual answer: granted, or a pending
        move if the owner still holds it unused). Still in use at the end:
        the busy answer, saying how long it waited."""
        owner = busy["owner"]
        log.info("volume=%s: in use on %s; host %s waits up to %gs for its containers to stop", vol, owner,
                 host, in_use_wait)
        if await self._wait_for(lambda c, now: waits.in_use_ended(c, vol, owner, now), in_use_wait) is None:
            return {**busy, "message": f"{busy.get('message') or 'in use on ' + repr(owner)}, "
                                       f"still after waiting {in_use_wait:g}s"}
        res = await self._mutate(lambda c, now: leases.acquire(c, vol, host, now, wait))
        self._log_acquire(vol, host, res)
        return res

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
        d = self._apply_soft(lambda c, now: leases.heartbeat(c, host, reports, now, progress))
        res = d.result
        if res["lost"]:
            # A lease granted through another replica may not have reached this
            # copy yet: never tell a host it lost a volume from a stale copy.
            await self._refresh([records.lkey(v) for v in res["lost"]])
            d = self._apply_soft(lambda c, now: leases.heartbeat(c, host, reports, now, progress))
            res = d.result
        await self._write_live(host, records.live_value(host, d))
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
        deadline = self.clock() + a["timeout"]
        running = {(j["name"], j["root"]) for j in a["running"]}
        while True:
            jobs = await self._mutate(lambda c, now: removals.claim_jobs(c, host, now))
            moves = self.cluster.moves_for(host, self.clock())
            new_jobs = [j for j in jobs if (j["name"], j["root"]) not in running]
            snaps = [j for j in snapshots.jobs_for(self.cluster, host) if j["seq"] > a["snap_after"]]
            if moves or new_jobs or snaps or self.clock() >= deadline:
                return {"moves": moves, "removals": jobs, "snapshots": snaps}
            await self._wait_change(deadline)

    async def op_lease_acquire(self, a: dict[str, Any]) -> Any:
        vol, host, wait, in_use_wait = a["volume"], a["host_id"], a["wait"], a["in_use_wait"]
        res = await self._mutate(lambda c, now: leases.acquire(c, vol, host, now, wait))
        self._log_acquire(vol, host, res)
        if res["status"] == "busy" and wait > 0 and res.get("owner") in self.cluster.hosts:
            res = await self._await_owner_fate(vol, host, res, wait)
        if res["status"] == "busy" and in_use_wait > 0 and self._in_use_by(vol, res.get("owner")):
            res = await self._await_in_use_end(vol, host, res, wait, in_use_wait)
        if res["status"] != "pending" or wait <= 0:
            return res
        seq = res["move_seq"]
        out = await self._wait_for(lambda c, now: waits.pending_acquire_outcome(c, vol, host, seq, now), wait)
        self._volume(vol)
        if out == waits.ACQUIRE:
            res = await self._mutate(lambda c, now: leases.acquire(c, vol, host, now, 0.0))
        elif isinstance(out, dict):
            res = out
        else:
            lease = self.cluster.leases.get(vol)
            return {**res, "message": f"host {lease.host if lease else res.get('owner')!r} did not answer the "
                                      f"move within {wait:g}s; retry, or wait for its lease to expire if it is down"}
        self._log_acquire(vol, host, res)
        return res

    def _log_acquire(self, vol: str, host: str, res: dict[str, Any]) -> None:
        # A holder asking again gets its grant again (same generation): count each grant once.
        if res["status"] == "granted" and self._counted_grants.get(vol) != res.get("generation"):
            self._counted_grants[vol] = res.get("generation")
            self.metrics.lease_grants.labels("takeover" if res.get("takeover") else "normal").inc()
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

    # --------------------------------------------------------- status page
    def web_status(self) -> dict[str, Any]:
        """What the status page shows (control/web.py), from this replica's copy."""
        return status_document(self.cluster, self.clock(), self.wall())

    # --------------------------------------------------------- metrics
    def _gauges_now(self) -> ClusterGauges:
        return cluster_gauges(self.cluster, self.clock())

    def _gauges_any_thread(self) -> ClusterGauges:
        """The cluster gauges, computed on the trio thread whichever thread asks
        (a scrape comes from prometheus-client's HTTP thread)."""
        try:
            trio.lowlevel.current_task()
        except RuntimeError:        # not on the trio thread
            if self._trio_token is None:
                return ClusterGauges()
            try:
                return trio.from_thread.run_sync(self._gauges_now, trio_token=self._trio_token)
            except trio.RunFinishedError:
                return ClusterGauges()
        return self._gauges_now()

    # --------------------------------------------------------- requests
    async def handle(self, body: bytes) -> tuple[dict[str, Any], bool]:
        """One frame body -> (response, token_ok). Never raises. token_ok is True only
        when the request carried the cluster token (or none is needed): what
        control/listener.py needs to tell an authenticated peer from one that is not."""
        started = self.clock()
        response, token_ok, op = await self._handle(body)
        outcome = "ok" if response["ok"] else str(response["error"]["code"])
        self.metrics.request(op, outcome, self.clock() - started)
        return response, token_ok

    async def _handle(self, body: bytes) -> tuple[dict[str, Any], bool, str]:
        """handle()'s work; also returns the operation's name for the metrics: a
        known operation's, else "invalid", never what a peer sent."""
        op = "invalid"
        rid = None
        token_ok = False
        try:
            req = protocol.parse_request(body)
            rid = req.id
            if req.op in self.ops:
                op = req.op
            if self._token is not None and not hmac.compare_digest(req.token.encode(), self._token):
                raise ProtocolError("unauthorized", "wrong or missing cluster token: pass the cluster's token "
                                    "with --token-file or FERRY_TOKEN", rid)
            token_ok = True
            args = protocol.check_args(req)
            result = await self.ops[req.op](args)
            return protocol.ok_response(rid, result), True, op
        except ProtocolError as e:
            return protocol.error_response(e.id, e.code, e.message), token_ok, op
        except Refused as e:
            return protocol.error_response(rid, e.code, e.message), token_ok, op
        except StateError as e:
            log.error("state store failure: %s", e)
            return protocol.error_response(rid, "unavailable", f"{protocol.STORE_UNAVAILABLE} ({e}); nothing "
                                           "was changed: retry (another replica may reach it)"), token_ok, op
        except Exception as e:  # a bug: answer and log, never crash the service
            log.exception("internal error handling a request")
            return (protocol.error_response(rid, "internal", f"internal error: {type(e).__name__}: {e}"),
                    token_ok, op)

    async def serve(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Load state, listen, serve forever. task_status.started(port)."""
        await self.load()
        self._trio_token = trio.lowlevel.current_trio_token()

        async def handler(stream: trio.SocketStream) -> None:
            try:
                peer = "{}:{}".format(*stream.socket.getpeername()[:2])
            except OSError:
                peer = "?"
            if ssl_context is None:
                await self.listener.serve_stream(stream, peer)
                return

            async def handshake(raw: trio.abc.Stream) -> trio.abc.Stream:
                tls = trio.SSLStream(raw, ssl_context, server_side=True)
                try:
                    await tls.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError, OSError) as e:
                    log.info("TLS handshake with %s failed: %s", peer, e)
                    raise trio.ClosedResourceError from None
                return tls
            await self.listener.serve_stream(stream, peer, handshake)

        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
            bound = listeners[0].socket.getsockname()[1]
            for task in (self.sweep, self.flusher, self.follow, self.live_writer, self.compactor):
                nursery.start_soon(self._supervised, task)
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
