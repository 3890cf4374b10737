"""The one control API client (trio), shared by the `ferry` CLI and the agents.

Why one client: both talk the same wire format with the same errors, so a
fix (reconnects, timeouts, messages) lands once. Each call borrows a
connection from a small pool, so an agent's long-poll `host.watch` never
delays its heartbeats. A stale pooled connection (the server restarted) is
retried once on a fresh one: every operation is safe to repeat (creates and
acquires are idempotent, release of a free lease is a no-op).
"""
from __future__ import annotations

import itertools
import ssl
from typing import Any

import trio

from control import protocol
from control.protocol import FrameBuffer, FrameError

DEFAULT_PORT = 7450
DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"
MAX_IDLE = 4


class ControlError(Exception):
    """The service answered with an error; `code` is one of protocol.ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No answer from the control service (connect failed, timed out, connection lost)."""


def parse_addr(addr: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """'host:port', 'host', '[::1]:7450' -> (host, port). ValueError explains."""
    a = addr.strip()
    if not a:
        raise ValueError("empty address; use HOST:PORT, e.g. 127.0.0.1:7450")
    if a.startswith("["):
        host, sep, rest = a[1:].partition("]")
        if not sep:
            raise ValueError(f"address {addr!r}: missing ']'")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif a.count(":") == 1:
        host, port_s = a.split(":")
    else:
        host, port_s = a, ""
    try:
        port = int(port_s) if port_s else default_port
    except ValueError:
        raise ValueError(f"address {addr!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"address {addr!r}: port {port} is out of range")
    return host or "0.0.0.0", port


def parse_addrs(addrs: str, default_port: int = DEFAULT_PORT) -> list[tuple[str, int]]:
    """'a:7450,b:7450,[::1]:7450' -> [(host, port), ...] (the control replicas). ValueError explains."""
    parts = [p for p in addrs.split(",") if p.strip()] if addrs.strip() else []
    if not parts:
        raise ValueError("empty address; use HOST:PORT[,HOST:PORT...], e.g. 10.0.0.1:7450,10.0.0.2:7450")
    return [parse_addr(p, default_port) for p in parts]


def store_unavailable(resp: Any) -> bool:
    """Whether `resp` says the replica cannot reach its state store (nothing was done)."""
    err = resp.get("error") if isinstance(resp, dict) and resp.get("ok") is False else None
    return (isinstance(err, dict) and err.get("code") == "unavailable"
            and str(err.get("message", "")).startswith(protocol.STORE_UNAVAILABLE))


class _Conn:
    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.buf = FrameBuffer()
        # The service takes frames over protocol.MAX_UNAUTH_FRAME only on a connection
        # that already carried the token: a big first request is preceded by a ping.
        self.authed = False

    async def call(self, frame: bytes) -> dict[str, Any]:
        await self.stream.send_all(frame)
        while True:
            body = self.buf.next_frame()
            if body is not None:
                return protocol.unpack(body)
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise trio.BrokenResourceError("connection closed by the control service")
            self.buf.feed(data)


class ControlClient:
    """`async with ControlClient("10.0.0.1:7450", token) as c: await c.volume_list()`."""

    def __init__(self, addr: str, token: str, tls: bool | ssl.SSLContext = False, *,
                 timeout: float = 10.0, connect_timeout: float = 5.0):
        self.addr = addr
        # Several replicas ("a:7450,b:7450"): calls go to one until it fails,
        # then to the next (every operation is safe to repeat).
        self.addrs = parse_addrs(addr)
        self._current = 0
        self.token = token
        if tls is True:
            tls = ssl.create_default_context()
        self.ssl_context: ssl.SSLContext | None = tls or None
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._idle: list[_Conn] = []
        self._ids = itertools.count(1)
        self._closed = False

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for c in idle:
            await trio.aclose_forcefully(c.stream)

    @property
    def host(self) -> str:
        return self.addrs[self._current][0]

    @property
    def port(self) -> int:
        return self.addrs[self._current][1]

    def _unreachable(self, why: str) -> Unreachable:
        where = self.addr if len(self.addrs) == 1 else f"{self.addr} (tried every replica)"
        return Unreachable(f"cannot reach the control service at {where}: {why}. Check --control "
                           f"(or FERRY_CONTROL) and that `ferry control serve` is running there")

    async def _fail_over(self, failed: int) -> None:
        """Replica `failed` did not answer: use the next one from now on."""
        if len(self.addrs) > 1 and self._current == failed:
            self._current = (failed + 1) % len(self.addrs)
            idle, self._idle = self._idle, []
            for c in idle:
                await trio.aclose_forcefully(c.stream)

    async def _connect(self) -> _Conn:
        """A connection to the current replica, else to the next that answers."""
        last: Unreachable | None = None
        for _ in range(len(self.addrs)):
            i = self._current
            try:
                return await self._connect_to(*self.addrs[i])
            except Unreachable as e:
                last = e
                await self._fail_over(i)
        assert last is not None
        raise last

    async def _connect_to(self, host: str, port: int) -> _Conn:
        try:
            with trio.fail_after(self.connect_timeout):
                stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
                if self.ssl_context is not None:
                    tls = trio.SSLStream(stream, self.ssl_context, server_hostname=host)
                    try:
                        await tls.do_handshake()
                    except BaseException:
                        await trio.aclose_forcefully(stream)
                        raise
                    stream = tls
        except trio.TooSlowError:
            raise self._unreachable(f"no connection within {self.connect_timeout:g}s") from None
        except (OSError, trio.BrokenResourceError, ssl.SSLError) as e:
            raise self._unreachable(str(e) or type(e).__name__) from None
        return _Conn(stream)

    async def call(self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Send one request, return its result or raise ControlError / Unreachable."""
        if self._closed:
            raise RuntimeError("ControlClient is closed")
        req_id = next(self._ids)
        frame = protocol.encode_frame(protocol.make_request(req_id, op, args or {}, self.token))
        limit = self.timeout if timeout is None else timeout
        retries = len(self.addrs)          # a lost connection: the next replica (a stale pooled one: again)
        while True:
            fresh = not self._idle
            i = self._current
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                with trio.fail_after(limit):
                    if not conn.authed and len(frame) > protocol.MAX_UNAUTH_FRAME:
                        ping = protocol.make_request(next(self._ids), "ping", {}, self.token)
                        await conn.call(protocol.encode_frame(ping))
                    resp = await conn.call(frame)
                    conn.authed = conn.authed or (isinstance(resp, dict) and resp.get("ok") is True)
            except trio.TooSlowError:
                await trio.aclose_forcefully(conn.stream)
                await self._fail_over(i)
                raise self._unreachable(f"no answer to {op} within {limit:g}s") from None
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError, FrameError,
                    protocol.ProtocolError) as e:
                await trio.aclose_forcefully(conn.stream)
                if not fresh:
                    continue            # a stale pooled connection: retry on a fresh one
                if retries > 0 and len(self.addrs) > 1:
                    retries -= 1
                    await self._fail_over(i)
                    continue
                raise self._unreachable(f"connection lost during {op} ({e or type(e).__name__})") from None
            except BaseException:
                await trio.aclose_forcefully(conn.stream)   # cancelled mid-call: the stream is unusable
                raise
            if len(self._idle) < MAX_IDLE and not self._closed:
                self._idle.append(conn)
            else:
                await trio.aclose_forcefully(conn.stream)
            if retries > 0 and len(self.addrs) > 1 and store_unavailable(resp):
                retries -= 1            # this replica lost its state store: another may still reach it
                await self._fail_over(i)
                continue
            return self._result(op, resp, req_id)

    @staticmethod
    def _result(op: str, resp: Any, req_id: int) -> Any:
        if not isinstance(resp, dict) or "ok" not in resp:
            raise ControlError("internal", f"{op}: malformed response from the control service")
        if resp.get("ok") is True:
            return resp.get("result")
        err = resp.get("error") or {}
        code = err.get("code") if isinstance(err, dict) else None
        msg = err.get("message") if isinstance(err, dict) else None
        raise ControlError(code if isinstance(code, str) else "internal", str(msg or f"{op} failed"))

    # ------------------------------------------------------------ operations
    async def ping(self) -> dict[str, Any]:
        return await self.call("ping")

    async def volume_create(self, name: str, options: dict[str, str] | None = None,
                            labels: dict[str, str] | None = None, wait: float = 120.0) -> dict[str, Any]:
        """Record a volume; with options["from"], wait up to `wait` s for an agent to make the clone."""
        return await self.call("volume.create", {"name": name, "options": options or {}, "labels": labels or {},
                                                 "wait": wait}, timeout=self.timeout + wait)

    async def volume_get(self, name: str) -> dict[str, Any]:
        return await self.call("volume.get", {"name": name})

    async def volume_list(self) -> list[dict[str, Any]]:
        return await self.call("volume.list")

    async def volume_remove(self, name: str, host_id: str = "", wait: float = 0.0) -> dict[str, Any]:
        """Mark for removal (control/removals.py). `host_id`: the agent asking, which
        then does the store part itself. `wait`: until the volume is fenced in the store."""
        return await self.call("volume.remove", {"name": name, "host_id": host_id, "wait": wait},
                               timeout=self.timeout + wait)

    async def removal_marked(self, name: str, host_id: str, root: str) -> dict[str, Any]:
        return await self.call("removal.marked", {"name": name, "host_id": host_id, "root": root})

    async def removal_aborted(self, name: str, host_id: str, reason: str) -> None:
        await self.call("removal.aborted", {"name": name, "host_id": host_id, "reason": reason})

    async def removal_done(self, root: str, host_id: str) -> dict[str, Any]:
        return await self.call("removal.done", {"root": root, "host_id": host_id})

    async def removal_list(self) -> list[dict[str, Any]]:
        return await self.call("removal.list")

    async def snapshot_create(self, volume: str, snap: str, wait: float = 120.0) -> dict[str, Any]:
        return await self.call("snapshot.create", {"volume": volume, "snap": snap, "wait": wait},
                               timeout=self.timeout + wait)

    async def snapshot_rm(self, volume: str, snap: str, wait: float = 120.0) -> dict[str, Any]:
        return await self.call("snapshot.rm", {"volume": volume, "snap": snap, "wait": wait},
                               timeout=self.timeout + wait)

    async def snapshot_done(self, volume: str, snap: str, host_id: str, seq: int, error: str | None,
                            position: list[int] | None, note: str | None = None) -> dict[str, Any]:
        return await self.call("snapshot.done", {"volume": volume, "snap": snap, "host_id": host_id, "seq": seq,
                                                 "error": error, "position": position, "note": note})

    async def volume_resize(self, name: str, size: str, wait: float = 120.0) -> dict[str, Any]:
        return await self.call("volume.resize", {"name": name, "size": size, "wait": wait},
                               timeout=self.timeout + wait)

    async def volume_move(self, name: str, to: str, wait: float = 30.0) -> dict[str, Any]:
        return await self.call("volume.move", {"name": name, "to": to, "wait": wait},
                               timeout=self.timeout + wait)

    async def host_register(self, host_id: str, address: str = "", version: str = "") -> dict[str, Any]:
        return await self.call("host.register", {"host_id": host_id, "address": address, "version": version})

    async def host_heartbeat(self, host_id: str, volumes: list[dict[str, Any]] | None = None,
                             removals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """volumes: [{name, in_use, epoch, upload_lag_s}] of the volumes this host serves;
        removals: [{root, deleted, total, bytes}] of the deletions it runs."""
        return await self.call("host.heartbeat", {"host_id": host_id, "volumes": volumes or [],
                                                  "removals": removals or []})

    async def host_list(self) -> list[dict[str, Any]]:
        return await self.call("host.list")

    async def host_watch(self, host_id: str, timeout: float = 30.0,
                         running: list[dict[str, Any]] | None = None, snap_after: int = 0) -> dict[str, Any]:
        """Long poll for moves asked of this host, removal jobs that are not in
        `running` ({name, root} of the jobs it already runs) and snapshot jobs
        numbered above `snap_after`."""
        return await self.call("host.watch", {"host_id": host_id, "timeout": timeout, "running": running or [],
                                              "snap_after": snap_after}, timeout=self.timeout + timeout)

    async def lease_acquire(self, volume: str, host_id: str, wait: float = 0.0,
                            in_use_wait: float = 0.0) -> dict[str, Any]:
        """Ask for a volume's lease. `wait`: how long to wait for an owner that
        does not use it to release it (a planned move) or for a dead owner's
        lease to expire; `in_use_wait`: how long to wait for a live owner's
        containers to stop using it (a Swarm task moving)."""
        args: dict[str, Any] = {"volume": volume, "host_id": host_id, "wait": wait}
        if in_use_wait > 0:         # only then: a control service older than the argument refuses it
            args["in_use_wait"] = in_use_wait
        return await self.call("lease.acquire", args, timeout=self.timeout + wait + in_use_wait)

    async def lease_release(self, volume: str, host_id: str, epoch: int | None = None) -> None:
        await self.call("lease.release", {"volume": volume, "host_id": host_id, "epoch": epoch})

    async def lease_refuse_move(self, volume: str, host_id: str) -> None:
        await self.call("lease.refuse_move", {"volume": volume, "host_id": host_id})

    async def volume_recover(self, name: str, options: dict[str, str], created: float = 0.0,
                             snapshots: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        return await self.call("volume.recover", {"name": name, "options": options, "created": created,
                                                  "snapshots": snapshots or {}})

    async def removal_recover(self, name: str, root: str) -> dict[str, Any]:
        return await self.call("removal.recover", {"name": name, "root": root})

    async def status(self) -> dict[str, Any]:
        return await self.call("status")
