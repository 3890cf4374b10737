"""The control service's TCP side: connections, their limits, and who may send what.

Why a module of its own: the control port faces the network, and what a
peer may cost the service before it has proved it holds the cluster token
is a policy with numbers, not a detail of request handling:

* An unauthenticated peer may send frames of at most `MAX_UNAUTH_FRAME`
  bytes (a request of the first kind a client sends fits easily; the 16 MiB
  limit applies once a request on the connection carried the right token),
  must complete its first request within `AUTH_DEADLINE` seconds, and is cut
  off after `MAX_REFUSALS` refused requests, whatever the refusal (wrong
  token, garbage, wrong version).
* At most `MAX_UNAUTHENTICATED` connections may be unauthenticated at once,
  and at most `MAX_CONNECTIONS` open in all; past that new ones are closed
  at once (and logged, at most once a minute).
* A frame whose first byte arrived must be complete within `FRAME_DEADLINE`
  seconds (a peer trickling a byte at a time is cut off), and an
  authenticated connection with no request for `IDLE_TIMEOUT` seconds is
  closed (clients reconnect transparently).

Every refusal to an unauthenticated peer is logged with its address (the
first of each connection, then one line when the connection is cut off).
"""
from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from control import protocol
from control.protocol import FrameBuffer, FrameError

log = logging.getLogger("ferry.control")

MAX_UNAUTH_FRAME = protocol.MAX_UNAUTH_FRAME
AUTH_DEADLINE = 10.0
FRAME_DEADLINE = 30.0
IDLE_TIMEOUT = 600.0
MAX_REFUSALS = 5
MAX_UNAUTHENTICATED = 256
MAX_CONNECTIONS = 16384

# (response, token_ok): token_ok is True only when the request carried the right token.
Handler = Callable[[bytes], Awaitable[tuple[dict[str, Any], bool]]]


@dataclass
class Limits:
    """The numbers above, one object so tests can shrink them."""

    max_unauth_frame: int = MAX_UNAUTH_FRAME
    auth_deadline: float = AUTH_DEADLINE
    frame_deadline: float = FRAME_DEADLINE
    idle_timeout: float = IDLE_TIMEOUT
    max_refusals: int = MAX_REFUSALS
    max_unauthenticated: int = MAX_UNAUTHENTICATED
    max_connections: int = MAX_CONNECTIONS


class Listener:
    """Serves connections to `handle`, one request at a time per connection."""

    def __init__(self, handle: Handler, limits: Limits | None = None, *, open_access: bool = False):
        self.handle = handle
        self.limits = limits or Limits()
        # open_access: no token to prove (mutual TLS authenticated the peer already).
        self.open_access = open_access
        self.connections = 0
        self.unauthenticated = 0
        self.refused_connections = 0
        self._last_full_log = -1e9
        # Unauthenticated connections, oldest first: a new one pushes the oldest out
        # when they are all taken (a real client proves its token within
        # milliseconds of connecting, an attacker's idle sockets are the old ones).
        self._waiting: dict[int, _Conn] = {}
        self._ids = 0

    def _admit(self) -> bool:
        """Room for one more connection? When the unauthenticated ones are all taken,
        the oldest that is not in the middle of a request makes room (a request in
        progress may be a real client's first: never cut it); if every one is busy,
        the new connection is closed."""
        lim = self.limits
        if self.connections >= lim.max_connections:
            self.refused_connections += 1
            self._log_full("closing new connections")
            return False
        if self.unauthenticated >= lim.max_unauthenticated:
            oldest = next((c for c in self._waiting.values() if not c.busy), None)
            self.refused_connections += 1
            if oldest is None:
                self._log_full("closing new connections (every unauthenticated one has a request running)")
                return False
            del self._waiting[oldest.id]
            oldest.scope.cancel()
            self._log_full("dropping the oldest idle unauthenticated connection for a new one")
        return True

    def _log_full(self, what: str) -> None:
        now = trio.current_time()
        if now - self._last_full_log > 60:
            self._last_full_log = now
            log.warning("control service full (%d connections, %d not yet authenticated): %s; %d so far",
                        self.connections, self.unauthenticated, what, self.refused_connections)

    async def serve_stream(self, stream: trio.abc.Stream, peer: str,
                           prepare: Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]] | None = None) -> None:
        """Serve one connection until EOF, garbage, a limit, or a deadline. `prepare`
        (a TLS handshake) runs first, counted and bounded like the rest."""
        if not self._admit():
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        self._ids += 1
        conn = _Conn(self._ids, peer, authed=self.open_access,
                     buf=FrameBuffer(max_frame=protocol.MAX_FRAME if self.open_access
                                     else self.limits.max_unauth_frame))
        if not conn.authed:
            self.unauthenticated += 1
            self._waiting[conn.id] = conn
        try:
            with conn.scope:
                if prepare is not None:
                    with trio.move_on_after(self.limits.auth_deadline) as handshake:
                        stream = await prepare(stream)
                    if handshake.cancelled_caught:
                        log.info("control connection from %s closed: no TLS handshake in time", peer)
                        return
                await self._serve(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            self.connections -= 1
            if not conn.authed:
                self.unauthenticated -= 1
                self._waiting.pop(conn.id, None)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _serve(self, stream: trio.abc.Stream, conn: _Conn) -> None:
        lim = self.limits
        buf = conn.buf
        deadline = trio.current_time() + lim.auth_deadline
        frame_started: float | None = None
        refusals = 0
        while True:
            try:
                body = buf.next_frame()
            except FrameError as e:
                why = str(e) if conn.authed else f"{e} before authentication"
                await stream.send_all(protocol.encode_frame(protocol.error_response(None, "bad_request", why)))
                if not conn.authed:
                    log.warning("control connection from %s cut off: %s", conn.peer, why)
                return
            if body is None:
                now = trio.current_time()
                if buf.pending and frame_started is None:
                    frame_started = now
                if not conn.authed:
                    limit = deadline
                elif frame_started is not None:
                    limit = frame_started + lim.frame_deadline
                else:
                    limit = now + lim.idle_timeout
                data = None
                with trio.move_on_at(limit):
                    data = await stream.receive_some(1 << 16)
                if data is None:
                    log.info("control connection from %s closed: %s", conn.peer,
                             "no authenticated request in time" if not conn.authed else
                             "frame not completed in time" if buf.pending else "idle")
                    return
                if not data:
                    return
                buf.feed(data)
                continue
            frame_started = None
            conn.busy = True
            try:
                resp, token_ok = await self.handle(body)
            finally:
                conn.busy = False
            try:
                frame = protocol.encode_frame(resp)
            except (FrameError, TypeError, ValueError) as e:
                frame = protocol.encode_frame(protocol.error_response(resp.get("id"), "internal",
                                                                      f"response not encodable: {e}"))
            await stream.send_all(frame)
            if conn.authed:
                continue
            if token_ok:
                conn.authed = True
                self.unauthenticated -= 1
                self._waiting.pop(conn.id, None)
                buf.max_frame = protocol.MAX_FRAME
                continue
            refusals += 1
            err = resp.get("error") or {}
            if refusals == 1:
                log.warning("control request from %s refused before authentication: %s (%s)", conn.peer,
                            err.get("code"), protocol.printable(err.get("message", ""), 200))
            if refusals >= lim.max_refusals:
                log.warning("control connection from %s cut off after %d refused requests", conn.peer, refusals)
                return
            deadline = trio.current_time() + lim.auth_deadline


@dataclass
class _Conn:
    id: int
    peer: str
    authed: bool
    buf: FrameBuffer
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    busy: bool = False             # a request is being handled
