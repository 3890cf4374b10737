"""A small, strict HTTP/1.1 server: h11 on trio. Used by the control
service's status page (control/web.py) and by the agent's plugin socket
(agent/http.py), which may import control; it lives here for that reason.

Why hand-rolled: both speak a handful of small requests; h11 gives a correct
parser without a framework, and trio keeps every request cancellable.
Malformed HTTP (bad request line, oversized headers or body, garbage bytes)
is answered by the caller's `refuse(status, message)` and the connection
closed; it never reaches the handler. A handler that raises is a bug: it is
logged and answered with a 500, and the server goes on.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

log = logging.getLogger("ferry.http")
MAX_HEADERS = 64 << 10
IDLE_TIMEOUT = 300.0
READ_TIMEOUT = 30.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str                      # without the query
    query: str
    headers: dict[str, str]        # lower-case names
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]
Refuse = Callable[[int, str], Response]


def _encode(conn: h11.Connection, resp: Response, keep_alive: bool, head: bool = False) -> bytes:
    """The response's bytes; to a HEAD request, its headers only (HTTP sends no body then)."""
    headers = [("Content-Type", resp.content_type), ("Content-Length", str(len(resp.body))), *resp.headers]
    if not keep_alive:
        headers.append(("Connection", "close"))
    out = conn.send(h11.Response(status_code=resp.status, headers=headers))
    if not head:
        out += conn.send(h11.Data(data=resp.body))
    return out + conn.send(h11.EndOfMessage())


async def serve_connection(stream: trio.abc.Stream, handler: Handler, refuse: Refuse, *,
                           max_body: int) -> None:
    """Answer requests on one connection until it closes or misbehaves."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
    try:
        while True:
            req: h11.Request | None = None
            body = bytearray()
            too_big = False
            deadline = trio.current_time() + IDLE_TIMEOUT
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    with trio.move_on_at(deadline) as cs:
                        data = await stream.receive_some(65536)
                    if cs.cancelled_caught:
                        return
                    conn.receive_data(bytes(data))     # b"" = EOF
                    continue
                if isinstance(ev, h11.ConnectionClosed):
                    return
                if isinstance(ev, h11.Request):     # the rest of it must come within READ_TIMEOUT
                    req, deadline = ev, trio.current_time() + READ_TIMEOUT
                    length = dict(ev.headers).get(b"content-length")
                    too_big = length is not None and int(length) > max_body
                elif isinstance(ev, h11.Data):
                    too_big = too_big or len(body) + len(ev.data) > max_body
                    if not too_big:
                        body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                if too_big:     # answer now, without reading the rest
                    break
            assert req is not None
            if too_big:
                await stream.send_all(_encode(conn, refuse(413, f"request body too large (at most {max_body} "
                                                                f"bytes)"), keep_alive=False))
                return
            target = req.target.decode("ascii", "replace")
            path, _, query = target.partition("?")
            request = Request(method=req.method.decode("ascii", "replace"), path=path, query=query,
                              headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in req.headers},
                              body=bytes(body))
            try:
                resp = await handler(request)
            except Exception as e:  # noqa: BLE001 - a bug must not kill the server
                log.exception("internal error answering %s %s", request.method, path)
                resp = refuse(500, f"internal error: {type(e).__name__}: {e}")
            await stream.send_all(_encode(conn, resp, keep_alive=True, head=request.method == "HEAD"))
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as e:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                                     OSError):
                await stream.send_all(_encode(conn, refuse(e.error_status_hint or 400,
                                                           f"malformed HTTP request: {e}"), keep_alive=False))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, h11.LocalProtocolError):
        pass
    except Exception:  # noqa: BLE001 - a bug here must close this connection, never stop the server
        log.exception("internal error on an HTTP connection")
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
