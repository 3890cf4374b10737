"""Garbage collection over the store: `run` is an offline pass (ferry fs
gc), `live` the pass a mounted volume runs in the background. The rules
they follow are pure and live lower, in `fsd.volume.retention`, because
snapshots and history must obey them too.

May import: the ground, `fsd.volume`, `fsd.datapath` and `fsd.backup`.
"""
__all__ = ["live", "run"]
