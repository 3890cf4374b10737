"""A small etcd v3 client over etcd's gRPC-JSON gateway (HTTP/1.1 + JSON), on httpx.

Why this and not a gRPC client (docs/cluster.md, "Why the gateway"):
python-etcd3 is unmaintained and fails to import with current protobuf,
aetcd has no TLS, and the maintained gRPC clients are asyncio-only (a bridge
to trio would lose trio's cancellation). The gateway is part of every etcd
server since 3.3 (`/v3/...` paths from 3.4), speaks the same API as gRPC
(range, txn, watch as a streamed response, leases, auth), and httpx runs on
trio natively, so a cancelled control request really stops its etcd call.
No grpc or protobuf versions to pin.

What this module knows: endpoints and failing over between them, TLS
(CA, client certificate), user/password auth (a token renewed when etcd says
it expired), the JSON encoding (keys and values base64, 64-bit integers as
strings, default values omitted), and which errors mean "try another
member" versus "the request is wrong". It knows nothing about ferry's keys:
control/etcd_state.py maps the state-store contract onto it.
"""
from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from control.state import Compacted, StateError

log = logging.getLogger("ferry.control.etcd")

# gRPC status codes etcd answers with (in the JSON body's "code").
_UNAVAILABLE = 14
_DEADLINE = 4
_OUT_OF_RANGE = 11
_UNAUTHENTICATED = 16
_RETRYABLE_MESSAGES = ("leader changed", "no leader", "request timed out", "too many requests",
                       "not capable", "raft: stopped", "server stopped")


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd: TLS files, auth, and how long one request may try."""

    ca: str | None = None            # CA bundle that signed the members' certificates (enables https)
    cert: str | None = None          # client certificate (etcd --client-cert-auth)
    key: str | None = None
    user: str | None = None          # etcd user; the password is read from a file by the CLI
    password: str | None = None
    timeout: float = 10.0            # one call, across every member and retry
    attempt_timeout: float = 2.0     # one try on one member (a proposal lost with a dead leader
                                     # hangs there for etcd's request timeout: try another member)

    @property
    def tls(self) -> bool:
        return bool(self.ca or self.cert)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


class EtcdError(StateError):
    """etcd refused a request (`code` is the gRPC status code, 0 when unknown)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """No member answered within the call's time."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key that starts with `prefix` (etcd's range_end)."""
    p = bytearray(prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"          # every key


def _endpoint_url(ep: str, tls: bool) -> str:
    ep = ep.strip().rstrip("/")
    if "://" in ep:
        return ep
    return f"{'https' if tls else 'http'}://{ep}"


class EtcdClient:
    """One process's connection to an etcd cluster (any member serves any request)."""

    def __init__(self, endpoints: list[str], options: EtcdOptions | None = None):
        if not endpoints:
            raise ValueError("no etcd endpoint given")
        self.options = options or EtcdOptions()
        self.endpoints = [_endpoint_url(e, self.options.tls) for e in endpoints]
        self._current = 0
        verify: Any = self.options.ssl_context() if self.options.tls else True
        self._http = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(self.options.timeout),
                                       limits=httpx.Limits(max_keepalive_connections=16))
        self._token: str | None = None
        self._auth_lock = trio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------ plumbing
    def _rotate(self, failed: int) -> None:
        if self._current == failed:
            self._current = (failed + 1) % len(self.endpoints)

    async def _headers(self) -> dict[str, str]:
        if self.options.user and self._token is None:
            await self._authenticate()
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self) -> None:
        async with self._auth_lock:
            if self._token is not None:
                return
            res = await self.call("/v3/auth/authenticate",
                                  {"name": self.options.user, "password": self.options.password or ""}, auth=False)
            self._token = res.get("token")
            if not self._token:
                raise EtcdError(f"etcd did not give a token for user {self.options.user!r}")

    @staticmethod
    def _error(status: int, text: str) -> EtcdError:
        try:
            body = json.loads(text)
            msg, code = body.get("message") or body.get("error") or text, int(body.get("code") or 0)
        except (ValueError, AttributeError):
            msg, code = text.strip() or f"HTTP {status}", 0
        return EtcdError(f"etcd: {msg}", code)

    @staticmethod
    def _retryable(e: EtcdError) -> bool:
        return e.code in (_UNAVAILABLE, _DEADLINE) or any(m in str(e) for m in _RETRYABLE_MESSAGES)

    async def call(self, path: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        """POST `body` to `path` on a member; fail over and retry until the call's
        time is up. Writes are retried too: ferry's writes are compare-and-swap
        transactions, so a retried write that had already been applied fails its
        compare instead of applying twice."""
        deadline = trio.current_time() + self.options.timeout
        delay = 0.05
        last: Exception | None = None
        reauthed = False
        while True:
            i = self._current
            try:
                headers = await self._headers() if auth else {}
                with trio.fail_after(max(0.1, min(self.options.attempt_timeout,
                                                  deadline - trio.current_time()))):
                    r = await self._http.post(self.endpoints[i] + path, json=body, headers=headers)
                if r.status_code == 200:
                    return r.json()
                err = self._error(r.status_code, r.text)
                if auth and self.options.user and not reauthed and (
                        err.code == _UNAUTHENTICATED or "auth token" in str(err)):
                    self._token, reauthed = None, True
                    continue
                if err.code == _OUT_OF_RANGE and "compacted" in str(err):
                    raise Compacted(0, 0)
                if not self._retryable(err):
                    raise err
                last = err
                self._rotate(i)            # a member without a leader (partitioned): ask another
            except (httpx.TransportError, trio.TooSlowError) as e:
                last = e
                self._rotate(i)
            if trio.current_time() + delay >= deadline:
                raise EtcdUnavailable(f"etcd did not answer {path} within {self.options.timeout:g}s "
                                      f"(members {', '.join(self.endpoints)}): {last}", _UNAVAILABLE)
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # ------------------------------------------------------------------ API
    async def range(self, key: bytes, range_end: bytes | None = None, *, revision: int = 0,
                    limit: int = 0) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        if revision:
            body["revision"] = str(revision)
        if limit:
            body["limit"] = str(limit)
        return await self.call("/v3/kv/range", body)

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return await self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    async def compact(self, revision: int) -> None:
        await self.call("/v3/kv/compaction", {"revision": str(revision)})

    async def status(self) -> dict[str, Any]:
        return await self.call("/v3/maintenance/status", {})

    async def watch(self, key: bytes, range_end: bytes, start_revision: int,
                    idle_timeout: float = 60.0) -> AsyncIterator[dict[str, Any]]:
        """The watch responses (`result` objects with `events`) from `start_revision`
        on, from one member, until the stream breaks (EtcdUnavailable: watch
        again from the last revision seen) or etcd compacted that history
        (Compacted). A stream quiet for `idle_timeout` s ends too (EtcdUnavailable),
        so a member that silently lost the cluster is not listened to forever."""
        i = self._current
        body = {"create_request": {"key": b64(key), "range_end": b64(range_end),
                                   "start_revision": str(start_revision)}}
        try:
            # Only a member that has a leader may serve the watch: one cut off from the
            # quorum would just stay quiet (etcd's "require leader" gRPC metadata).
            headers = {**await self._headers(), "Grpc-Metadata-Hasleader": "true"}
            timeout = httpx.Timeout(self.options.timeout, read=idle_timeout)
            async with self._http.stream("POST", self.endpoints[i] + "/v3/watch", json=body, headers=headers,
                                         timeout=timeout) as r:
                if r.status_code != 200:
                    err = self._error(r.status_code, (await r.aread()).decode(errors="replace"))
                    if err.code == _UNAUTHENTICATED or "auth token" in str(err):
                        self._token = None
                    raise EtcdUnavailable(str(err), err.code)
                async for line in r.aiter_lines():
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "error" in msg:
                        err = msg["error"]
                        raise EtcdUnavailable(f"etcd watch: {err.get('message') or err}", int(err.get("code") or 0))
                    res = msg.get("result", {})
                    if res.get("canceled"):
                        if res.get("compact_revision"):
                            raise Compacted(start_revision - 1, int(res["compact_revision"]))
                        raise EtcdUnavailable(f"etcd cancelled the watch: {res.get('cancel_reason') or 'no reason'}")
                    if res.get("events"):
                        yield res
        except httpx.ReadTimeout:
            self._rotate(i)
            return            # quiet for idle_timeout: the caller watches again, on another member
        except httpx.TransportError as e:
            self._rotate(i)
            raise EtcdUnavailable(f"etcd watch on {self.endpoints[i]} broke: {type(e).__name__}: {e}") from None
        raise EtcdUnavailable(f"etcd watch on {self.endpoints[i]} ended")
