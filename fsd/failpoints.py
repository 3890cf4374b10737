"""Named points where tests make the daemon die on purpose (kill -9 at a
chosen moment). Inert unless FERRY_FAILPOINTS is set, e.g.
`FERRY_FAILPOINTS=after_blocks_uploaded` or `...=before_snapshot:3` (the 3rd
time the point is reached), `FERRY_FAILPOINT_DELAYS=name=seconds` for
points that only pause, and `FERRY_FAILPOINT_BUGS=name[:n]` for points that
raise an unexpected exception (a stand-in for a bug, to show it fails the
mount cleanly rather than hanging it). Read once at import; costs one dict
lookup.
"""
from __future__ import annotations

import logging
import os
import signal
import time

_points: dict[str, int] = {}
for _item in filter(None, os.environ.get("FERRY_FAILPOINTS", "").split(",")):
    _name, _, _nth = _item.partition(":")
    _points[_name.strip()] = int(_nth) if _nth else 1


_bugs: dict[str, int] = {}
for _item in filter(None, os.environ.get("FERRY_FAILPOINT_BUGS", "").split(",")):
    _name, _, _nth = _item.partition(":")
    _bugs[_name.strip()] = int(_nth) if _nth else 1


class InjectedBug(RuntimeError):
    """Raised by an armed `bug` point; deliberately not a store or filesystem error."""


_delays: dict[str, float] = {}
for _item in filter(None, os.environ.get("FERRY_FAILPOINT_DELAYS", "").split(",")):
    _name, _, _secs = _item.partition("=")
    _delays[_name.strip()] = float(_secs or 1)


def delay(name: str) -> None:
    """Sleep (in the calling worker thread) at `name` if FERRY_FAILPOINT_DELAYS
    arms it (`name=seconds`): opens a race window a test can act in, and says
    so in the log."""
    if name in _delays:
        logging.getLogger("ferry.failpoints").warning("failpoint %s: pausing %g s", name, _delays[name])
        time.sleep(_delays[name])


def delay_seconds(name: str) -> float:
    """For async code (it sleeps on its own clock): the pause FERRY_FAILPOINT_DELAYS
    arms at `name`, the first time only; 0 otherwise."""
    secs = _delays.pop(name, 0.0)
    if secs:
        logging.getLogger("ferry.failpoints").warning("failpoint %s: pausing %g s", name, secs)
    return secs


def hit(name: str) -> None:
    """SIGKILL this process the n-th time `name` is reached, if armed."""
    if name in _points:
        _points[name] -= 1
        if _points[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


def bug(name: str) -> None:
    """Raise InjectedBug the n-th time `name` is reached (and every time after), if armed."""
    if name in _bugs:
        _bugs[name] -= 1
        if _bugs[name] <= 0:
            raise InjectedBug(f"failpoint {name}: injected bug")
