"""The control service's Prometheus metrics: the pure gauges as a table, and a
real replica scraped while clients work (the numbers move with the work)."""
from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from control import leases as L
from control.client import ControlError
from control.leases import Cluster, Config, VolumeReport
from control.metrics import ClusterGauges, cluster_gauges
from tests.conftest import free_port
from tests.control.conftest import TOKEN
from tests.helpers.net import wait_listening

TTL = 10.0


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    if isinstance(text, bytes):
        text = text.decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(text: str | bytes, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def test_cluster_gauges_follow_the_cluster():
    c = Cluster(config=Config(ttl=TTL, heartbeat=2.0))
    assert cluster_gauges(c, 0.0) == ClusterGauges()
    for h in ("a", "b", "c"):
        c.apply(L.register_host(c, h, f"{h}:1", "t", now=0.0, wall=1000.0))
    for v in ("v1", "v2", "v3"):
        c.apply(L.create_volume(c, v, {}, {}, wall=1000.0))
    c.apply(L.acquire(c, "v1", "a", 1.0))
    c.apply(L.acquire(c, "v2", "b", 1.0))
    c.apply(L.heartbeat(c, "a", [VolumeReport(name="v1", in_use=True, epoch=2, upload_lag_s=3.5)], 2.0))
    c.apply(L.heartbeat(c, "b", [VolumeReport(name="v2", in_use=False, epoch=2, upload_lag_s=0.5)], 2.0))
    c.apply(L.request_move(c, "v2", "c", 3.0, 30.0))
    g = cluster_gauges(c, 4.0)
    assert g == ClusterGauges(hosts_alive=3, hosts_silent=0, volumes=3, leases_held=2, leases_in_use=1,
                              moves=1, removals=0, snapshot_jobs=0, upload_lag_max_s=3.5)
    # c never heartbeats after registering at 0; a and b did at 2: at 11, only c is silent
    g = cluster_gauges(c, 11.0)
    assert (g.hosts_alive, g.hosts_silent) == (2, 1)
    # the move expires (asked at 3 to wait 30 s, plus one TTL), the hosts all go silent
    g = cluster_gauges(c, 44.0)
    assert (g.hosts_alive, g.hosts_silent, g.moves) == (0, 3, 0)


async def test_a_scrape_sees_the_work_of_the_clients(control):
    m = control.server.metrics
    before = m.exposition()
    assert value(before, "ferry_control_volumes") == 0
    async with control.client() as c:
        await c.host_register("h1", "h1:1", "t")
        await c.volume_create("v1")
        await c.volume_create("v2")
        res = await c.lease_acquire("v1", "h1")
        assert res["status"] == "granted"
        with pytest.raises(ControlError):
            await c.volume_get("nope")
    after = m.exposition()
    assert value(after, "ferry_control_volumes") == 2
    assert value(after, "ferry_control_hosts", state="alive") == 1
    assert value(after, "ferry_control_leases", state="idle") == 1
    assert value(after, "ferry_control_requests_total", op="volume.create", outcome="ok") == 2
    assert value(after, "ferry_control_requests_total", op="volume.get", outcome="not_found") == 1
    assert value(after, "ferry_control_request_seconds_count", op="volume.create") == 2
    assert value(after, "ferry_control_lease_grants_total", kind="normal") == 1
    # a request with an unknown operation is counted under "invalid", never under what the peer sent
    async with control.client() as c:
        with pytest.raises(ControlError):
            await c.call("no.such.op", {})
    assert value(m.exposition(), "ferry_control_requests_total", op="invalid", outcome="bad_request") == 1
    assert not any("no.such.op" in str(k) for k in samples(m.exposition()))


async def test_a_scrape_from_another_thread_gets_the_gauges_from_the_trio_thread(control):
    async with control.client() as c:
        await c.volume_create("v1")
    text = await trio.to_thread.run_sync(control.server.metrics.exposition)
    assert value(text, "ferry_control_volumes") == 1


def test_control_serve_metrics_flag(tmp_path):
    """`ferry control serve --metrics ADDR` serves the exposition over HTTP."""
    port, mport = free_port(), free_port()
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    with open(tmp_path / "control.log", "wb") as log:   # the child has its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "cli", "control", "serve", "--listen", f"127.0.0.1:{port}",
                                 "--state", f"sqlite:{tmp_path / 'c.db'}", "--token-file", str(tmp_path / "token"),
                                 "--metrics", f"127.0.0.1:{mport}"], stdout=log, stderr=log,
                                cwd=Path(__file__).parents[2])
    try:
        wait_listening("127.0.0.1", port, proc, tmp_path / "control.log")
        wait_listening("127.0.0.1", mport, proc, tmp_path / "control.log")
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read()
        assert value(text, "ferry_control_volumes") == 0
        assert value(text, "ferry_control_hosts", state="alive") == 0
        assert b"ferry_control_requests_total" in text or b"ferry_control_requests" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
