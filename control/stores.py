"""Opening the control state named by a `--state` URL: `sqlite:PATH` or
`etcd://H:P[,H:P...][/PREFIX/]`.

Why apart from control/state.py: that module is the contract both backends
implement; choosing one by URL needs both, and the contract must not import
its implementations.
"""
from __future__ import annotations

from typing import Any

from control.state import StateStore


def open_state(url: str, etcd_options: Any = None) -> StateStore:
    """`sqlite:PATH` -> SqliteState, `etcd://H:P[,H:P...]` -> EtcdState.
    ValueError explains any other URL; StateError a store that cannot be opened."""
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("--state sqlite:PATH needs a path, e.g. sqlite:/var/lib/ferry/control.db")
        from control.sqlite_state import SqliteState  # each backend only when asked for
        return SqliteState(path)
    if url.startswith("etcd://"):
        from control.etcd_state import EtcdState, parse_etcd_url
        endpoints, prefix = parse_etcd_url(url)
        return EtcdState(endpoints, prefix=prefix, options=etcd_options)
    raise ValueError(f"unknown state URL {url!r}: use sqlite:PATH (e.g. sqlite:/var/lib/ferry/control.db) "
                     "or etcd://HOST:PORT[,HOST:PORT...] (e.g. etcd://10.0.0.1:2379,10.0.0.2:2379)")
