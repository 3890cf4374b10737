"""Two small pieces the data path is built with, so its parts are wired
through their constructors rather than by attributes set afterwards.

`Background`: where the data layer starts its best-effort tasks (eager
uploads of full blocks, read-ahead). It exists before the mount serves and
only runs tasks once `run` is started in the mount's nursery; before that,
and in tools that never serve, `running` is False and callers skip the work
(the commit uploads what an eager upload would have).

`Wakeup`: a request for work that coalesces. Writers under pressure, fsync
and unmount call `set()` any number of times; the committer's `wait()`
returns once and forgets them, so one commit round answers them all.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio


class Background:
    def __init__(self) -> None:
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()

    @property
    def running(self) -> bool:
        return self._nursery is not None

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `fn(*args)` in the mount's nursery. Call only when `running`."""
        if self._nursery is None:
            raise RuntimeError("background tasks are not running (the mount does not serve yet)")
        self._nursery.start_soon(fn, *args)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve background tasks until cancelled (with the mount's nursery), or
        until `stop()`: then it returns once the tasks already started are done."""
        try:
            async with trio.open_nursery() as n:
                self._nursery = n
                task_status.started()
                await self._stop.wait()
        finally:
            self._nursery = None

    def stop(self) -> None:
        """Start nothing more; `run` returns when the running tasks end."""
        self._nursery = None
        self._stop.set()


class Wakeup:
    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Return once `set()` was called since the last return, or after `timeout` seconds."""
        with trio.move_on_after(timeout):
            await self._event.wait()
        self._event = trio.Event()
