"""docs/metrics.md, the Grafana dashboard and the code name the same metrics:
every documented name is exported, every exported name is documented, and
the dashboard queries only names that exist."""
from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import AgentMetrics, VolumeHere, volume_families
from control.metrics import ClusterGauges, ControlMetrics
from fsd.stats import Histogram

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def documented() -> set[str]:
    return set(re.findall(r"^\| `(ferry_[a-z_]+)` \|", (ROOT / "docs/metrics.md").read_text(), re.M))


def exported() -> set[str]:
    names: set[str] = set()
    control = ControlMetrics(lambda: ClusterGauges())
    control.request("ping", "ok", 0.001)
    control.lease_grants.labels("normal").inc()
    control.cas_conflicts.inc()
    for fam in text_string_to_metric_families(control.exposition().decode()):
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    h = Histogram().to_dict()
    st = {"dirty_bytes": 0, "inflight_bytes": 0, "upload_lag_s": 0.0, "fenced": False, "commits": 0, "updated_ns": 0,
          "metrics": {"bytes_written": 0, "fsync_errors": 0, "gc_freed_bytes": 0, "reads": {"store": 0},
                      "fsync_seconds": h, "store": {"latency": {"get": h}, "errors": [["get", "StoreError", 1]]},
                      "scrub": {"checked_objects": 1, "checked_bytes": 2, "damaged_last_pass": 0,
                                "last_pass_finished": 1.0}}}
    for fam in volume_families([("v", st)], 0):
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    agent = AgentMetrics(lambda: [VolumeHere("v", "serving", 1, None)],
                         lambda: [{"root": "r", "deleted": 1, "total": 2}])
    for fam in text_string_to_metric_families(agent.exposition().decode()):
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    # prometheus-client's own creation timestamps of counters and histograms
    return {n for n in names if not n.endswith("_created")}


def test_every_exported_metric_is_documented_and_every_documented_one_exported():
    assert exported() == documented()


def test_the_dashboard_queries_only_metrics_that_exist():
    exprs = [t["expr"] for p in json.loads((ROOT / "deploy/grafana/ferry.json").read_text())["panels"]
             for t in p["targets"]]
    used = {re.sub("|".join(s + "$" for s in SUFFIXES if s != "_total"), "", n)
            for e in exprs for n in re.findall(r"ferry_[a-z_]+", e)}
    assert used and used <= documented(), used - documented()
