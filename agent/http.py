"""Docker's plugin socket: the plugin protocol on control/httpd.py's HTTP
server, on a unix socket.

Docker speaks plain HTTP/1.1 POST with small JSON bodies. Malformed HTTP
(bad request line, oversized headers or body, garbage bytes) gets a 400
with a JSON `Err` and the connection is closed; it never reaches the
plugin logic.

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

import trio

from agent.plugin import CONTENT_TYPE, MAX_BODY
from control import httpd
from control.httpd import Request, Response

log = logging.getLogger("ferry.agent.http")
Handler = Callable[[str, bytes], Awaitable[dict[str, Any]]]


def _json(status: int, obj: dict[str, Any]) -> Response:
    return Response(status, json.dumps(obj).encode(), CONTENT_TYPE)


def _refuse(status: int, message: str) -> Response:
    return _json(status, {"Err": message})


def plugin_handler(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Docker's plugin protocol over HTTP: POST only, JSON in and out, every
    answer a 200 (refusals carry `Err`, as Docker expects)."""
    async def answer(req: Request) -> Response:
        if req.method != "POST":
            return _refuse(405, f"method {req.method} not allowed: the plugin API uses POST")
        try:
            return _json(200, await handler(req.path, req.body))
        except Exception as e:  # noqa: BLE001 - a bug must not kill the server
            log.exception("internal error answering %s", req.path)
            return _json(200, {"Err": f"internal error in the ferry agent: {type(e).__name__}: {e}"})
    return answer


async def serve_connection(stream: trio.abc.Stream, handler: Handler) -> None:
    """Answer plugin requests on one connection until it closes or misbehaves."""
    await httpd.serve_connection(stream, plugin_handler(handler), _refuse, max_body=MAX_BODY)


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
