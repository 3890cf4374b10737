"""The live status page a control replica serves (`ferry control serve --http ADDR`).

What it shows: hosts and their health, volumes with owner, epoch,
durability, layout, size and upload lag, snapshots, moves and removals in
progress, refreshed every two seconds; it reads well on a phone.

How it stays safe:
* The page itself (HTML, script, style: control/static/) holds no data.
  The data comes from GET /api/status, which needs the cluster token or
  the read-only token given with --http-read-token-file, sent by the page
  as `Authorization: Bearer ...`. The page asks for it once, keeps it in
  the tab's sessionStorage (never a cookie, so no other site can make the
  browser send it), or takes it from the URL's #token= fragment (which
  browsers never send to a server) and removes it from the address bar.
* /api/status carries what `ferry status` shows and nothing secret: no
  token, no credentials, no store URL.
* The script builds the page with textContent only, never innerHTML, so a
  volume or label named `<script>` is shown as those characters. The
  Content-Security-Policy allows only this origin's own script and style.

`status_document` is pure (a dict from the replica's copy of the state);
`WebApp.answer` maps a request to a response; `serve_web` is the listener.
"""
from __future__ import annotations

import hmac
import json
import logging
import ssl
from collections.abc import Callable
from importlib import resources
from typing import Any

import trio

from control import httpd
from control.httpd import Request, Response
from control.leases import Cluster, status_view

log = logging.getLogger("ferry.control.web")
MAX_BODY = 4096           # the page sends no bodies
MAX_CONNECTIONS = 64      # beyond this a new connection is closed at once: the page must not starve the service
HANDSHAKE_TIMEOUT = 10.0
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"),
]


def status_document(c: Cluster, now: float, wall: float) -> dict[str, Any]:
    """Pure: what /api/status answers. `now` is the replica's clock (leases),
    `wall` seconds since the epoch (when the page was made)."""
    st = status_view(c, now)
    moves = [{"volume": name, "to": m.to, "expires_in": round(m.expires - now, 1)}
             for name, m in sorted(c.moves.items()) if m.expires > now]
    owner_of = {name: lease.host for name, lease in c.leases.items()}
    return {
        "generated": wall, "ttl": st["ttl"],
        "hosts": [{"host": h["host_id"], "alive": h["alive"], "last_seen_s": h["last_heartbeat_age"],
                   "volumes": h["volumes"], "version": h["version"]} for h in st["hosts"]],
        "volumes": [{
            "name": v["name"], "owner": owner_of.get(v["name"]), "durability": v["durability"],
            "layout": v["options"].get("layout", "files"), "size": v["options"].get("size"),
            "epoch": (v["lease"] or {}).get("epoch"), "in_use": (v["lease"] or {}).get("in_use", False),
            "owner_alive": (v["lease"] or {}).get("alive"), "upload_lag_s": (v["lease"] or {}).get("upload_lag_s"),
            "state": v["state"], "snapshots": sorted(v.get("snapshots") or {}), "labels": v.get("labels") or {},
            "clone_of": v["options"].get("from"), "move": v.get("move"),
        } for v in st["volumes"]],
        "moves": moves,
        "removals": [{"name": r.get("name"), "host": r.get("host"), "deleted": r.get("deleted"),
                      "total": r.get("total"), "alive": r.get("alive")} for r in st["removals"]],
    }


class WebApp:
    """Requests to responses. `tokens` are the bearer tokens that may read."""

    def __init__(self, status: Callable[[], dict[str, Any]], tokens: list[str]) -> None:
        if not any(tokens):
            raise ValueError("the status page needs a token to check (the cluster token, or a read-only one)")
        self._status = status
        self._tokens = [t.encode() for t in tokens if t]
        # read once: no file I/O on the trio loop per request
        self._static = {path: (resources.files("control.static").joinpath(name).read_bytes(), ctype)
                        for path, (name, ctype) in STATIC.items()}

    def _authorized(self, req: Request) -> bool:
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        g = given.strip().encode()
        return any(hmac.compare_digest(g, t) for t in self._tokens)

    async def answer(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            return refuse(405, "only GET here")
        if req.path in self._static:
            body, ctype = self._static[req.path]
            return Response(200, body, ctype, [*SECURITY_HEADERS, ("Cache-Control", "no-cache")])
        if req.path == "/api/status":
            if not self._authorized(req):
                return Response(401, b'{"error": "the cluster token (or the page\'s read-only token) is needed"}',
                                "application/json", [*SECURITY_HEADERS, ("Cache-Control", "no-store"),
                                                     ("WWW-Authenticate", 'Bearer realm="ferry"')])
            body = json.dumps(self._status()).encode()
            return Response(200, body, "application/json", [*SECURITY_HEADERS, ("Cache-Control", "no-store")])
        return refuse(404, "not found")


def refuse(status: int, message: str) -> Response:
    return Response(status, (message + "\n").encode(), "text/plain; charset=utf-8", SECURITY_HEADERS)


async def serve_web(app: WebApp, host: str, port: int, ssl_context: ssl.SSLContext | None = None, *,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the page on host:port until cancelled (HTTPS with `ssl_context`);
    task_status.started(the bound port)."""
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound = listeners[0].socket.getsockname()[1]
    slots = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def one(stream: trio.SocketStream) -> None:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await trio.aclose_forcefully(stream)
            return
        try:
            s: trio.abc.Stream = stream
            if ssl_context is not None:
                tls = trio.SSLStream(stream, ssl_context, server_side=True)
                with trio.move_on_after(HANDSHAKE_TIMEOUT) as cs:
                    try:
                        await tls.do_handshake()
                    except (trio.BrokenResourceError, ssl.SSLError, OSError):
                        cs.cancel()
                if cs.cancelled_caught:
                    await trio.aclose_forcefully(stream)
                    return
                s = tls
            await httpd.serve_connection(s, app.answer, refuse, max_body=MAX_BODY)
        except Exception:  # noqa: BLE001 - one connection's trouble never stops the page or the service
            log.exception("status page connection failed")
        finally:
            slots.release()

    if ssl_context is None:
        # The CLI serves plain HTTP on loopback only, where nobody can read the token on the way.
        log.info("status page on http://%s:%d/ (plain HTTP on loopback; from another machine use an SSH tunnel, "
                 "or serve it with --tls-cert)", host, bound)
    else:
        log.info("status page on https://%s:%d/", host, bound)
    async with trio.open_nursery() as n:
        task_status.started(bound)
        await trio.serve_listeners(one, listeners, handler_nursery=n)
