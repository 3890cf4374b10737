"""Prometheus metrics of one agent and the volumes it serves (docs/metrics.md).

Each mounted volume is served by its own fsd process, which counts what it
does (fsd/stats.py, fsd/store/metered.py) and writes the counts into its
status file every second. At scrape time the agent reads those files and
turns them into metric families labelled with the volume's name: nothing
is counted twice, a daemon that restarts starts its counters again (as
Prometheus expects of a process), and the agent's own loop pays nothing.

A scrape runs in prometheus-client's HTTP thread: it reads status files
there (file I/O off the trio loop), and asks the trio thread, through the
`volumes` callable, only for the list of volumes and their phases.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fsd.stats import Histogram

log = logging.getLogger("ferry.agent.metrics")


@dataclass(frozen=True)
class VolumeHere:
    """What the agent's records say of one volume at scrape time."""

    name: str
    phase: str
    mounts: int                  # containers using it on this host
    status: Path | None          # its daemon's status file, when a daemon runs here


def read_status(path: Path) -> dict[str, Any] | None:
    """A daemon's status file, or None (not written yet, being replaced, gone)."""
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return st if isinstance(st, dict) else None


def volume_families(statuses: list[tuple[str, dict[str, Any]]], now_ns: int) -> Iterator[Metric]:
    """Pure: the per-volume metric families of (volume name, status file) pairs."""
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"ferry_volume_{name}", doc, labels=["volume"])

    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
        return CounterMetricFamily(f"ferry_volume_{name}", doc, labels=["volume", *labels])

    dirty = gauge("dirty_bytes", "Bytes written and not yet part of a commit")
    inflight = gauge("inflight_bytes", "Bytes in commits under way")
    lag = gauge("upload_lag_seconds", "Age of the oldest change the store does not hold yet")
    fenced = gauge("fenced", "1 when a newer owner fenced this mount (it acknowledges nothing more)")
    age = gauge("status_age_seconds", "Time since the daemon last wrote its status (stale above a few seconds)")
    commits = counter("commits", "Commits written to the store")
    written = counter("written_bytes", "Bytes applications wrote")
    fsync_errors = counter("fsync_errors", "fsyncs answered with an error (EIO: fenced or failed)")
    reads = counter("block_reads", "Committed blocks read, by where from (memory, cache, store): the cache hit "
                    "ratio is the share not from the store", ("source",))
    gc_freed = counter("gc_freed_bytes", "Bytes garbage collection deleted from the store")
    scrub_objects = counter("scrub_checked_objects", "Data objects the background scrub read and verified")
    scrub_bytes = counter("scrub_checked_bytes", "Bytes the background scrub read")
    scrub_damaged = gauge("scrub_damaged_objects", "Data objects the last (or current) scrub pass found damaged "
                          "or missing")
    scrub_finished = gauge("scrub_last_pass_timestamp_seconds", "When the last complete scrub pass finished")
    store_errors = counter("store_errors", "Store requests that failed, by request and error kind",
                           ("op", "kind"))
    fsync = HistogramMetricFamily("ferry_volume_fsync_seconds", "Time an fsync waited until its data was "
                                  "durable", labels=["volume"])
    store_seconds = HistogramMetricFamily("ferry_volume_store_request_seconds", "Time of a store request, by "
                                          "request", labels=["volume", "op"])
    for vol, st in statuses:
        for fam, key in ((dirty, "dirty_bytes"), (inflight, "inflight_bytes"), (lag, "upload_lag_s")):
            if isinstance(st.get(key), (int, float)):
                fam.add_metric([vol], st[key])
        fenced.add_metric([vol], 1 if st.get("fenced") else 0)
        if isinstance(st.get("updated_ns"), int):
            age.add_metric([vol], max(0.0, (now_ns - st["updated_ns"]) / 1e9))
        if isinstance(st.get("commits"), int):
            commits.add_metric([vol], st["commits"])
        m = st.get("metrics")
        if not isinstance(m, dict):
            continue        # a daemon from before metrics, or a status being written
        try:
            written.add_metric([vol], int(m["bytes_written"]))
            fsync_errors.add_metric([vol], int(m["fsync_errors"]))
            gc_freed.add_metric([vol], int(m["gc_freed_bytes"]))
            sc = m.get("scrub")
            if isinstance(sc, dict):        # daemons from before the scrub have none
                scrub_objects.add_metric([vol], int(sc["checked_objects"]))
                scrub_bytes.add_metric([vol], int(sc["checked_bytes"]))
                scrub_damaged.add_metric([vol], int(sc["damaged_last_pass"]))
                if sc.get("last_pass_finished") is not None:
                    scrub_finished.add_metric([vol], float(sc["last_pass_finished"]))
            for source, n in sorted(m["reads"].items()):
                reads.add_metric([vol, str(source)], int(n))
            h = Histogram.from_dict(m["fsync_seconds"])
            fsync.add_metric([vol], h.cumulative(), h.total)
            for op, hd in sorted(m["store"]["latency"].items()):
                h = Histogram.from_dict(hd)
                store_seconds.add_metric([vol, str(op)], h.cumulative(), h.total)
            for op, kind, n in m["store"]["errors"]:
                store_errors.add_metric([vol, str(op), str(kind)], int(n))
        except (KeyError, TypeError, ValueError) as e:
            log.debug("volume %s: unreadable metrics in its status file: %s", vol, e)
    yield from (dirty, inflight, lag, fenced, age, commits, written, fsync_errors, reads, gc_freed, store_errors,
                fsync, store_seconds, scrub_objects, scrub_bytes, scrub_damaged, scrub_finished)


class _AgentCollector(Collector):
    def __init__(self, volumes: Callable[[], list[VolumeHere]],
                 removals: Callable[[], list[dict[str, Any]]]) -> None:
        self._volumes = volumes
        self._removals = removals

    def collect(self) -> Iterator[Metric]:
        here = self._volumes()
        phases = GaugeMetricFamily("ferry_agent_volumes", "Volumes this agent has records of, by phase",
                                   labels=["phase"])
        by_phase: dict[str, int] = {}
        for v in here:
            by_phase[v.phase] = by_phase.get(v.phase, 0) + 1
        for phase, n in sorted(by_phase.items()):
            phases.add_metric([phase], n)
        yield phases
        mounts = GaugeMetricFamily("ferry_volume_mounts", "Containers using the volume on this host",
                                   labels=["volume"])
        for v in here:
            mounts.add_metric([v.name], v.mounts)
        yield mounts
        statuses = [(v.name, st) for v in here if v.status is not None
                    if (st := read_status(v.status)) is not None]
        yield from volume_families(statuses, time.time_ns())
        deleted = GaugeMetricFamily("ferry_agent_removal_deleted_objects", "Objects a removal running on this "
                                    "host deleted so far", labels=["root"])
        total = GaugeMetricFamily("ferry_agent_removal_total_objects", "Objects a removal running on this "
                                  "host has to delete (as listed when it started)", labels=["root"])
        for r in self._removals():
            deleted.add_metric([str(r["root"])], r.get("deleted") or 0)
            total.add_metric([str(r["root"])], r.get("total") or 0)
        yield deleted
        yield total


class AgentMetrics:
    """One agent's metrics on a registry of its own. `volumes` lists the
    volumes from any thread; `removals` the progress of removals here."""

    def __init__(self, volumes: Callable[[], list[VolumeHere]],
                 removals: Callable[[], list[dict[str, Any]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_AgentCollector(volumes, removals))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
