"""The agent's Prometheus metrics, scraped while a real fsd daemon works: the
numbers move with the workload (bytes written, fsyncs, commits, store
requests), and the upload lag rises while the store is cut."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import volume_families
from fsd.stats import Histogram
from tests.agent.harness import RunningAgent, agent_config, start_control
from tests.conftest import make_bucket
from tests.helpers.mount import write_fsync
from tests.helpers.tcpproxy import TcpProxy


def value(text: bytes, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


async def scrape(ra: RunningAgent) -> bytes:
    """As Prometheus does: from another thread."""
    assert ra.agent is not None
    return await trio.to_thread.run_sync(ra.agent.metrics.exposition)


async def until(ra: RunningAgent, ok, what: str, timeout: float = 30) -> bytes:
    with trio.fail_after(timeout):
        while True:
            text = await scrape(ra)
            if ok(text):
                return text
            await trio.sleep(0.2)


def test_volume_families_turn_a_status_file_into_metrics():
    h = Histogram()
    for v in (0.0004, 0.003, 0.003, 7.0):
        h.observe(v)
    st = {"dirty_bytes": 10, "inflight_bytes": 0, "upload_lag_s": 1.5, "fenced": True, "commits": 4,
          "updated_ns": 1_000_000_000,
          "metrics": {"bytes_written": 4096, "fsync_errors": 1, "gc_freed_bytes": 0,
                      "reads": {"memory": 1, "cache": 2, "store": 3}, "fsync_seconds": h.to_dict(),
                      "store": {"latency": {"put": h.to_dict()}, "errors": [["put", "StoreUnavailable", 2]]}}}
    fams = {f.name: f for f in volume_families([("v", st), ("broken", {"metrics": {"reads": 5}})], 3_000_000_000)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("ferry_volume_fenced", (("volume", "v"),))] == 1
    assert samples[("ferry_volume_status_age_seconds", (("volume", "v"),))] == 2.0
    assert samples[("ferry_volume_fsync_seconds_count", (("volume", "v"),))] == 4
    assert samples[("ferry_volume_fsync_seconds_bucket", (("le", "0.005"), ("volume", "v")))] == 3
    assert samples[("ferry_volume_fsync_seconds_bucket", (("le", "+Inf"), ("volume", "v")))] == 4
    assert samples[("ferry_volume_store_errors_total", (("kind", "StoreUnavailable"), ("op", "put"),
                                                  ("volume", "v")))] == 2
    assert samples[("ferry_volume_block_reads_total", (("source", "store"), ("volume", "v")))] == 3
    # a damaged metrics part is skipped, the rest of that volume still reported
    assert samples[("ferry_volume_fenced", (("volume", "broken"),))] == 0


@pytest.fixture
def proxied_store_url(moto_endpoint):
    proxy = TcpProxy("127.0.0.1", urlsplit(moto_endpoint).port)
    try:
        yield f"s3://{make_bucket(moto_endpoint)}?endpoint={proxy.endpoint}&region=us-east-1", proxy
    finally:
        proxy.close()


async def test_metrics_move_with_the_workload_and_upload_lag_rises_while_the_store_is_cut(
        nursery, tmp_path, run_dir, proxied_store_url):
    url, proxy = proxied_store_url
    control = await start_control(nursery, tmp_path)
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "m", "Opts": {"commit_interval": "0.5"}}))["Err"] == ""
    before = await scrape(ra)
    assert value(before, "ferry_agent_volumes", phase="serving") == 0
    mp = Path((await ra.call("/VolumeDriver.Mount", {"Name": "m", "ID": "c1"}))["Mountpoint"])
    try:
        for i in range(3):
            await trio.to_thread.run_sync(write_fsync, mp / f"f{i}", os.urandom(1 << 20))
        text = await until(ra, lambda t: value(t, "ferry_volume_written_bytes_total", volume="m") >= 3 << 20,
                           "the written bytes")
        assert value(text, "ferry_agent_volumes", phase="serving") == 1
        assert value(text, "ferry_volume_mounts", volume="m") == 1
        assert value(text, "ferry_volume_fsync_seconds_count", volume="m") >= 3
        assert value(text, "ferry_volume_commits_total", volume="m") >= 3
        assert value(text, "ferry_volume_store_request_seconds_count", volume="m", op="put") >= 4
        assert value(text, "ferry_volume_fenced", volume="m") == 0
        assert value(text, "ferry_volume_upload_lag_seconds", volume="m") < 2

        proxy.cut()
        await trio.to_thread.run_sync((mp / "late").write_bytes, b"x" * 4096)     # no fsync: it would wait
        await until(ra, lambda t: value(t, "ferry_volume_upload_lag_seconds", volume="m") > 2.0,
                    "the upload lag to rise")
        proxy.restore()
        await until(ra, lambda t: value(t, "ferry_volume_upload_lag_seconds", volume="m") < 1.0,
                    "the upload lag to fall again")
    finally:
        proxy.restore()
        assert (await ra.call("/VolumeDriver.Unmount", {"Name": "m", "ID": "c1"}))["Err"] == ""
    await ra.stop()
