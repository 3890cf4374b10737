"""Prometheus metrics of one control replica (docs/metrics.md lists every name).

Two kinds, kept apart on purpose:

* What this replica did: requests by operation and outcome, how long they
  took, leases it granted (and how many of those were takeovers), its
  compare-and-swap conflicts. prometheus-client's counters and histograms
  hold them; the trio side updates them as it works (cheap, thread-safe).
* What the cluster looks like now: hosts alive and silent, volumes, leases
  held and in use, moves, removals and snapshot jobs in progress, the
  largest upload lag. `cluster_gauges` computes them from the replica's copy
  of the state (pure, unit-tested), only when scraped: a scrape runs in
  prometheus-client's HTTP thread, which must never walk the live `Cluster`
  while trio changes it, so the server's `gauges` callable runs the
  computation on the trio thread (trio.from_thread) and hands the result
  over. Nothing is computed on the heartbeat path.

Replicas share one state, so every replica reports the same cluster gauges;
sum the counters over replicas, take the gauges from any one of them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from control.leases import Cluster

PREFIX = "ferry_control"
# Request latency buckets: a local CAS is ~1 ms, etcd a few ms; long polls
# (host.watch, lease.acquire with wait) sit in the last ones by design.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class ClusterGauges:
    """The cluster as one replica's copy shows it at one moment."""

    hosts_alive: int = 0
    hosts_silent: int = 0          # known, but not heard from within the lease TTL
    volumes: int = 0
    leases_held: int = 0           # a live or silent host holds it
    leases_in_use: int = 0         # ... and a container on that host uses the volume
    moves: int = 0                 # requested moves not yet done or expired
    removals: int = 0              # volumes being deleted from the store
    snapshot_jobs: int = 0         # snapshot, clone and resize jobs waiting for an agent
    upload_lag_max_s: float = 0.0  # the largest upload lag an owner reported


def cluster_gauges(c: Cluster, now: float) -> ClusterGauges:
    """Pure: the gauges of `c` at `now` (seconds on the replica's clock)."""
    alive = sum(1 for h in c.hosts if c.alive(h, now))
    held = [lease for lease in c.leases.values() if lease.host is not None]
    lags = [lag for name, lag in c.lags.items() if lag is not None and name in c.volumes]
    return ClusterGauges(
        hosts_alive=alive, hosts_silent=len(c.hosts) - alive, volumes=len(c.volumes),
        leases_held=len(held), leases_in_use=sum(1 for lease in held if lease.in_use),
        moves=sum(1 for name in c.moves if c.live_move(name, now) is not None),
        removals=len(c.removals), snapshot_jobs=len(c.snap_jobs),
        upload_lag_max_s=max(lags, default=0.0))


class _ClusterCollector(Collector):
    """Yields the last published ClusterGauges at scrape time."""

    def __init__(self, current: Callable[[], ClusterGauges]) -> None:
        self._current = current

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = self._current()
        hosts = GaugeMetricFamily(f"{PREFIX}_hosts", "Hosts known to the cluster, by liveness",
                                  labels=["state"])
        hosts.add_metric(["alive"], g.hosts_alive)
        hosts.add_metric(["silent"], g.hosts_silent)
        yield hosts
        leases = GaugeMetricFamily(f"{PREFIX}_leases", "Volume leases a host holds, by use", labels=["state"])
        leases.add_metric(["in_use"], g.leases_in_use)
        leases.add_metric(["idle"], g.leases_held - g.leases_in_use)
        yield leases
        for name, text, value in (
                ("volumes", "Volumes the cluster records", g.volumes),
                ("moves_in_progress", "Requested volume moves not yet done", g.moves),
                ("removals_in_progress", "Removed volumes whose objects are still being deleted", g.removals),
                ("jobs_waiting", "Snapshot, clone and resize jobs waiting for an agent", g.snapshot_jobs),
                ("upload_lag_max_seconds", "The largest upload lag a volume's owner reported", g.upload_lag_max_s)):
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value)


class ControlMetrics:
    """One replica's metrics, on a registry of its own (no process-wide
    default registry: tests run several replicas in one process). `gauges`
    returns the cluster gauges now, from any thread."""

    def __init__(self, gauges: Callable[[], ClusterGauges]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"{PREFIX}_requests", "Requests answered, by operation and outcome "
                                "(ok, or the error code)", ["op", "outcome"], registry=self.registry)
        self.request_seconds = Histogram(f"{PREFIX}_request_seconds", "Time to answer a request, by operation "
                                         "(long polls included)", ["op"], buckets=LATENCY_BUCKETS,
                                         registry=self.registry)
        self.lease_grants = Counter(f"{PREFIX}_lease_grants", "Leases granted, by kind (a takeover fences a "
                                    "silent owner)", ["kind"], registry=self.registry)
        self.cas_conflicts = Counter(f"{PREFIX}_cas_conflicts", "Decisions decided again because another "
                                     "replica changed a record first", registry=self.registry)
        self.registry.register(_ClusterCollector(gauges))

    def request(self, op: str, outcome: str, seconds: float) -> None:
        self.requests.labels(op, outcome).inc()
        self.request_seconds.labels(op).observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything above."""
        return generate_latest(self.registry)
