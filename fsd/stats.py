"""Counting what a mounted volume does, for the agent's metrics (docs/metrics.md).

Why not prometheus-client here: each volume is served by its own fsd
process, and the agent is what Prometheus scrapes. The daemon counts in
these plain structures and writes them into its status file every second;
the agent turns them into metric families with a `volume` label at scrape
time. Pure: no clock, no I/O, no locks (`fsd.store.metered` adds a lock
where worker threads count).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

# Seconds. An fsync of the local journal is ~1 ms, a commit to S3 tens of
# ms; a store outage makes fsync wait, which the top buckets show.
LATENCY_BOUNDS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                     2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    """Observations in buckets with upper bounds `bounds` (the last bucket,
    beyond them, is +Inf), their count and sum: what a Prometheus histogram
    exposes, kept as per-bucket (not cumulative) counts."""

    bounds: tuple[float, ...] = LATENCY_BOUNDS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        """ValueError on anything that is not a histogram this module wrote."""
        bounds = tuple(float(b) for b in d["bounds"])
        counts = [int(c) for c in d["counts"]]
        if len(counts) != len(bounds) + 1 or list(bounds) != sorted(bounds) or min(counts, default=0) < 0:
            raise ValueError("not a histogram")
        return cls(bounds=bounds, counts=counts, total=float(d["sum"]))

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound as Prometheus writes it, observations at or below it)], +Inf last."""
        out, running = [], 0
        for bound, n in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


@dataclass
class ReadStats:
    """Where committed blocks were read from: the cache hit ratio is
    (memory + cache) / (memory + cache + store)."""

    memory: int = 0
    cache: int = 0
    store: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"memory": self.memory, "cache": self.cache, "store": self.store}
