"""A small HTTP/1.1 server for Docker's plugin socket: h11 on trio, unix socket.

Why hand-rolled: Docker speaks plain HTTP/1.1 POST with small JSON bodies on
a unix socket; h11 gives a correct, strict parser without a framework, and
trio keeps every request cancellable. Malformed HTTP (bad request line,
oversized headers or body, garbage bytes) gets a 400 with a JSON `Err` and
the connection is closed; it never reaches the plugin logic.

`handler(path, body) -> dict` answers one request; the reply is JSON with
Docker's plugin content type. Docker's HTTP client treats non-2xx as errors,
so protocol-level refusals (`Err` set) are still sent with status 200.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import h11
import trio

from agent.plugin import CONTENT_TYPE, MAX_BODY

log = logging.getLogger("ferry.agent.http")
Handler = Callable[[str, bytes], Awaitable[dict[str, Any]]]
MAX_HEADERS = 64 << 10
IDLE_TIMEOUT = 300.0
READ_TIMEOUT = 30.0


def _response(status: int, obj: dict[str, Any], keep_alive: bool) -> tuple[h11.Response, bytes]:
    body = json.dumps(obj).encode()
    headers = [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))]
    if not keep_alive:
        headers.append(("Connection", "close"))
    return h11.Response(status_code=status, headers=headers), body


async def _send(stream: trio.abc.Stream, conn: h11.Connection, status: int, obj: dict[str, Any],
                keep_alive: bool = True) -> None:
    resp, body = _response(status, obj, keep_alive)
    await stream.send_all(conn.send(resp) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))


async def serve_connection(stream: trio.abc.Stream, handler: Handler) -> None:
    """Answer requests on one connection until it closes or misbehaves."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
    try:
        while True:
            # ------------------------------------------------- read one request
            req: h11.Request | None = None
            body = bytearray()
            too_big = False
            timeout = IDLE_TIMEOUT
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    with trio.move_on_after(timeout) as cs:
                        data = await stream.receive_some(65536)
                    if cs.cancelled_caught:
                        return
                    conn.receive_data(bytes(data))     # b"" = EOF
                    continue
                if isinstance(ev, h11.ConnectionClosed):
                    return
                if isinstance(ev, h11.Request):
                    req, timeout = ev, READ_TIMEOUT
                    length = dict(ev.headers).get(b"content-length")
                    too_big = length is not None and int(length) > MAX_BODY
                elif isinstance(ev, h11.Data):
                    too_big = too_big or len(body) + len(ev.data) > MAX_BODY
                    if not too_big:
                        body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                if too_big:     # answer now, without reading the rest
                    break
            assert req is not None
            # ------------------------------------------------- answer it
            path = req.target.decode("ascii", "replace").split("?", 1)[0]
            if req.method != b"POST":
                await _send(stream, conn, 405, {"Err": f"method {req.method.decode(errors='replace')} not "
                                                       f"allowed: the plugin API uses POST"})
            elif too_big:
                await _send(stream, conn, 413, {"Err": f"request body too large (at most {MAX_BODY} bytes)"},
                            keep_alive=False)
                return
            else:
                try:
                    reply = await handler(path, bytes(body))
                except Exception as e:  # noqa: BLE001 - a bug must not kill the server
                    log.exception("internal error answering %s", path)
                    reply = {"Err": f"internal error in the ferry agent: {type(e).__name__}: {e}"}
                await _send(stream, conn, 200, reply)
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except h11.RemoteProtocolError as e:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError,
                                     OSError):
                await _send(stream, conn, e.error_status_hint or 400,
                            {"Err": f"malformed HTTP request: {e}"}, keep_alive=False)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


def bind_unix_socket(path: Path) -> socket.socket:
    """Bind a listening unix socket at `path`: parent dirs created, a stale
    socket (nobody listening) replaced, anything else refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket; remove it or choose another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()                 # stale: left by an agent that died
        else:
            raise OSError(errno.EADDRINUSE, f"another process already serves {path} (is an agent running?)")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o660)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_unix(path: Path, handler: Handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `handler` on the unix socket `path` until cancelled; the socket file is removed at exit."""
    raw = await trio.to_thread.run_sync(bind_unix_socket, path)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
    log.info("serving the Docker volume plugin API on %s", path)

    async def serve_one(s: trio.SocketStream) -> None:
        await serve_connection(s, handler)

    try:
        async with trio.open_nursery() as n:
            task_status.started(path)
            await trio.serve_listeners(serve_one, [listener], handler_nursery=n)
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
