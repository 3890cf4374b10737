"""The state store on etcd (v3 API through its JSON gateway): shared by control replicas.

Keys live under a prefix (`/ferry/` by default, `etcd://H:P/other/` to
change it) so one etcd cluster can serve several ferry clusters or other
users. Values are msgpack. The contract of control/state.py maps one to one:
a state revision is etcd's `mod_revision`, `Op.expected` is a `MOD EQUAL`
compare (0 matches a missing key), a transaction is one etcd Txn, and a
watch is an etcd watch that this module re-opens on another member, from
the last revision it delivered, whenever a stream breaks.
"""
from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import msgpack
import trio

from control.etcd_client import EtcdClient, EtcdOptions, EtcdUnavailable, b64, prefix_end, unb64
from control.state import ANY, CasConflict, Event, Op, Snapshot

log = logging.getLogger("ferry.control.etcd")
DEFAULT_PREFIX = "/ferry/"
PAGE = 2000


def parse_etcd_url(url: str) -> tuple[list[str], str]:
    """`etcd://h1:2379,h2:2379[/prefix/]` -> (["h1:2379", "h2:2379"], "/prefix/")."""
    rest = url[len("etcd://"):]
    hosts, slash, path = rest.partition("/")
    endpoints = [h.strip() for h in hosts.split(",") if h.strip()]
    if not endpoints:
        raise ValueError(f"{url!r} names no etcd member: use etcd://HOST:PORT[,HOST:PORT...][/PREFIX/]")
    for ep in endpoints:
        host, colon, port = ep.rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"etcd member {ep!r} in {url!r} is not HOST:PORT (etcd's client port is "
                             "usually 2379)")
    prefix = "/" + path if slash else DEFAULT_PREFIX
    if not prefix.endswith("/"):
        prefix += "/"
    return endpoints, prefix


def _pack(value: Any) -> str:
    return b64(msgpack.packb(value, use_bin_type=True))


def _unpack(text: str | None) -> Any:
    return msgpack.unpackb(unb64(text), raw=False)


class EtcdState:
    kind = "etcd"

    def __init__(self, endpoints: list[str], *, prefix: str = DEFAULT_PREFIX, options: EtcdOptions | None = None,
                 client: EtcdClient | None = None):
        self.prefix = prefix
        self._p = prefix.encode()
        self.client = client or EtcdClient(endpoints, options)

    def _k(self, key: str) -> bytes:
        return self._p + key.encode()

    def _unk(self, raw: str) -> str:
        return unb64(raw)[len(self._p):].decode()

    async def get(self, key: str) -> tuple[Any, int] | None:
        res = await self.client.range(self._k(key))
        kvs = res.get("kvs") or []
        if not kvs:
            return None
        return _unpack(kvs[0].get("value")), int(kvs[0]["mod_revision"])

    async def scan(self, prefix: str) -> Snapshot:
        start, end = self._k(prefix), prefix_end(self._k(prefix))
        rows: list[tuple[str, Any, int]] = []
        revision = 0
        while True:
            res = await self.client.range(start, end, revision=revision, limit=PAGE)
            revision = revision or int(res["header"]["revision"])
            kvs = res.get("kvs") or []
            rows += [(self._unk(kv["key"]), _unpack(kv.get("value")), int(kv["mod_revision"])) for kv in kvs]
            if not res.get("more") or not kvs:
                return Snapshot(rows, revision)
            start = unb64(kvs[-1]["key"]) + b"\0"

    async def revision(self) -> int:
        res = await self.client.range(self._k("\0revision-probe"))
        return int(res["header"]["revision"])

    async def txn(self, ops: list[Op]) -> int:
        compare = [{"key": b64(self._k(op.key)), "target": "MOD", "result": "EQUAL",
                    "mod_revision": str(op.expected)} for op in ops if op.expected != ANY]
        success = []
        for op in ops:
            if op.check:
                continue
            if op.delete:
                success.append({"request_delete_range": {"key": b64(self._k(op.key))}})
            else:
                success.append({"request_put": {"key": b64(self._k(op.key)), "value": _pack(op.value)}})
        failure = [{"request_range": {"key": c["key"], "keys_only": True}} for c in compare]
        res = await self.client.txn(compare, success, failure)
        if res.get("succeeded"):
            return int(res["header"]["revision"])
        checked = [op for op in ops if op.expected != ANY]
        at = int(res["header"]["revision"])
        for op, r in zip(checked, res.get("responses") or [], strict=False):
            kvs = (r.get("response_range") or {}).get("kvs") or []
            actual = int(kvs[0]["mod_revision"]) if kvs else 0
            if actual != op.expected:
                raise CasConflict(op.key, op.expected, actual, at)
        first = checked[0] if checked else ops[0]
        raise CasConflict(first.key, first.expected, None, at)

    async def watch(self, prefix: str, after: int) -> AsyncGenerator[list[Event], None]:
        start, end = self._k(prefix), prefix_end(self._k(prefix))
        delay = 0.05
        while True:
            try:
                async for res in self.client.watch(start, end, after + 1):
                    batch = []
                    for ev in res["events"]:
                        kv = ev["kv"]
                        rev = int(kv["mod_revision"])
                        value = None if ev.get("type") == "DELETE" else _unpack(kv.get("value"))
                        batch.append(Event(self._unk(kv["key"]), value, rev))
                        after = max(after, rev)
                    delay = 0.05
                    yield batch
            except EtcdUnavailable as e:
                log.warning("etcd watch interrupted (%s); watching again from revision %d", e, after + 1)
                yield []            # the contract's "interrupted, retrying" batch
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def compact(self, revision: int) -> None:
        await self.client.compact(revision)

    async def aclose(self) -> None:
        await self.client.aclose()
