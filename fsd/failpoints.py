"""Named points where tests make the daemon die on purpose (kill -9 at a
chosen moment). Inert unless FERRY_FAILPOINTS is set, e.g.
`FERRY_FAILPOINTS=after_blocks_uploaded` or `...=before_snapshot:3` (the 3rd
time the point is reached). Read once at import; costs one dict lookup.
"""
from __future__ import annotations

import os
import signal

_points: dict[str, int] = {}
for _item in filter(None, os.environ.get("FERRY_FAILPOINTS", "").split(",")):
    _name, _, _nth = _item.partition(":")
    _points[_name.strip()] = int(_nth) if _nth else 1


def hit(name: str) -> None:
    """SIGKILL this process the n-th time `name` is reached, if armed."""
    if name in _points:
        _points[name] -= 1
        if _points[name] <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
