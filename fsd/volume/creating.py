"""Volumes under construction: what a create that dies half-way leaves,
and who cleans it (docs/format.md, "Volumes under construction").

A volume becomes visible only with its incarnation record, written last.
An import uploads all of its data before that, under a root nothing names
yet; if it dies (kill -9, a lost host), those objects would stay forever.
So a long create first writes a marker `.ferry/creating/NAME/UUID` (the
prefix cannot collide with a volume: names never start with '.'), touches
it while it works, and deletes it after the incarnation record. A marker
untouched for `STALE_NS` is a dead create: `sweep` deletes its root (unless
the incarnation record made it a volume after all) and then the marker.
Every GC pass sweeps, the owner's background one included.

`stale` is pure; the rest is the store adapter (blocking).
"""
from __future__ import annotations

import logging
import os
import socket
import time

from fsd.format.framing import frame
from fsd.store.base import ObjectInfo, ObjectStore
from fsd.volume import objects as vol_mod

log = logging.getLogger("ferry.creating")

PREFIX = ".ferry/creating/"
MAGIC = b"FRYC"
STALE_NS = 30 * 60 * 10**9          # a creator touches its marker every minute or so
TOUCH_EVERY_NS = 60 * 10**9


def marker_key(root: str) -> str:
    return PREFIX + root


def root_of(key: str) -> str | None:
    return key[len(PREFIX):] if key.startswith(PREFIX) and key.count("/") >= 3 else None


def stale(markers: list[ObjectInfo], now_ns: int) -> list[str]:
    """Roots whose creator stopped touching their marker long ago."""
    return [r for o in markers if now_ns - o.mtime_ns > STALE_NS and (r := root_of(o.key)) is not None]


class Marker:
    """The marker of one create in progress: `touch()` often, `done()` at the end."""

    def __init__(self, store: ObjectStore, root: str, what: str) -> None:
        self.store = store
        self.key = marker_key(root)
        self.body = frame(MAGIC, {"root": root, "what": what, "host": socket.gethostname(), "pid": os.getpid()})
        self.store.put(self.key, self.body)
        self._last = time.monotonic_ns()

    def touch(self) -> None:
        if time.monotonic_ns() - self._last > TOUCH_EVERY_NS:
            self.store.put(self.key, self.body)
            self._last = time.monotonic_ns()

    def done(self) -> None:
        self.store.delete(self.key)


def sweep(store: ObjectStore, now_ns: int | None = None) -> list[str]:
    """Delete what dead creates left; returns the roots deleted."""
    now = now_ns if now_ns is not None else time.time_ns()
    gone = []
    for root in stale(list(store.list_info(PREFIX)), now):
        if not vol_mod.holder_exists(store, root):
            log.info("deleting %s: a volume create (import) that died before it finished", root)
            vol_mod.delete_all(store, root)
            gone.append(root)
        store.delete(marker_key(root))
    return gone
