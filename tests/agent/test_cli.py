"""`ferry agent serve` as a real process: usage errors, and a kill -9 of the
agent process that leaves the mount working and is adopted by the next agent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.fsd_proc import in_proc_mounts
from tests.agent.harness import TOKEN, post
from tests.conftest import free_port
from tests.helpers.mount import ferry_cmd, run_ferry
from tests.helpers.net import wait_listening


def test_usage_errors(tmp_path):
    r = run_ferry("agent", "serve", "--help")
    assert r.returncode == 0 and "example" in r.stdout and "--socket" in r.stdout
    base = ["agent", "serve", "--host-id", "h1", "--store", f"file://{tmp_path}", "--cache-dir", str(tmp_path)]
    r = run_ferry(*base, "--control", "h:notaport", env={"FERRY_TOKEN": "t"})
    assert r.returncode == 2 and "port" in r.stderr
    r = run_ferry(*base, "--control", "127.0.0.1:1", env={"FERRY_TOKEN": ""})
    assert r.returncode == 2 and "token" in r.stderr
    r = run_ferry("agent", "serve", "--control", "127.0.0.1:1", "--host-id", "bad/host", "--store",
                  f"file://{tmp_path}", "--cache-dir", str(tmp_path), env={"FERRY_TOKEN": "t"})
    assert r.returncode == 2 and "host" in r.stderr
    r = run_ferry("agent", "serve")
    assert r.returncode == 2
    ok = [*base, "--control", "127.0.0.1:1"]
    token = {"FERRY_TOKEN": "a-test-token-of-20ch"}
    r = run_ferry(*ok, "--in-use-wait", "-1", env=token)
    assert r.returncode == 2 and "--in-use-wait -1: give 0 to 50 seconds" in r.stderr, r.stderr
    r = run_ferry(*ok, "--in-use-wait", "90", env=token)
    assert r.returncode == 2 and "Docker gives a Mount 120 s" in r.stderr, r.stderr
    r = run_ferry(*ok, "--docker-host", "tcp://10.0.0.1:2375", env=token)
    assert r.returncode == 2 and "--docker-host" in r.stderr and "unix:///PATH" in r.stderr, r.stderr


class AgentProc:
    def __init__(self, tmp: Path, control: str, store: str) -> None:
        self.tmp = tmp
        self.sock = tmp / "h1" / "plugin.sock"
        self.argv = ferry_cmd() + ["agent", "serve", "--control", control, "--host-id", "h1", "--store", store,
                                   "--cache-dir", str(tmp / "h1" / "cache"), "--socket", str(self.sock),
                                   "--mount-root", str(tmp / "h1" / "mnt"), "--state-dir", str(tmp / "h1" / "state")]
        self.metrics_port = free_port()
        self.argv += ["--metrics", f"127.0.0.1:{self.metrics_port}"]
        self.proc: subprocess.Popen | None = None
        self.n = 0

    async def start(self) -> None:
        self.n += 1
        with open(self.tmp / f"agent{self.n}.log", "wb") as log:   # the child has its own copy of the descriptor
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, env={**os.environ, "FERRY_TOKEN": TOKEN})
        with trio.fail_after(20):
            while True:
                try:
                    status, r = await post(self.sock, "/Plugin.Activate")
                    if status == 200:
                        return
                except OSError:
                    pass
                assert self.proc.poll() is None, (self.tmp / f"agent{self.n}.log").read_text()
                await trio.sleep(0.1)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def log(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp.glob("agent*.log")))

    async def call(self, path, obj):
        status, r = await post(self.sock, path, obj)
        assert status == 200
        return r


@pytest.fixture
def control_proc(tmp_path):
    """`ferry control serve` as a real process on a free port, SQLite state in tmp."""
    port = free_port()
    with open(tmp_path / "control.log", "wb") as log:   # the child has its own copy of the descriptor
        proc = subprocess.Popen(ferry_cmd() + ["control", "serve", "--listen", f"127.0.0.1:{port}", "--state",
                                               f"sqlite:{tmp_path / 'control.db'}", "--lease-ttl", "6",
                                               "--heartbeat", "1"],
                                stdout=log, stderr=log, env={**os.environ, "FERRY_TOKEN": TOKEN})
    try:
        wait_listening("127.0.0.1", port, proc, tmp_path / "control.log", timeout=20)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
async def agent_proc(tmp_path, run_dir, control_proc, file_store_url):
    ap = AgentProc(tmp_path, control_proc, file_store_url)
    yield ap
    ap.kill9()


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
async def test_agent_process_killed_and_restarted(agent_proc):
    ap = agent_proc
    await ap.start()
    assert (await ap.call("/VolumeDriver.Create", {"Name": "v"}))["Err"] == ""
    r = await ap.call("/VolumeDriver.Mount", {"Name": "v", "ID": "c1"})
    assert r["Err"] == "", ap.log()
    mp = Path(r["Mountpoint"])

    def write(name: str, data: bytes) -> None:
        with open(mp / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    await trio.to_thread.run_sync(write, "one", b"1")
    ap.kill9()
    await trio.to_thread.run_sync(write, "two", b"2")       # the mount outlives the agent
    assert in_proc_mounts(mp)
    await ap.start()                                          # stale socket replaced, fsd adopted
    assert "adopted fsd" in ap.log()
    assert (await ap.call("/VolumeDriver.Path", {"Name": "v"}))["Mountpoint"] == str(mp)
    # --metrics: the adopted daemon's counts (both fsyncs) reach Prometheus through the new agent
    url = f"http://127.0.0.1:{ap.metrics_port}/metrics"

    def scrape() -> dict[tuple[str, str], float]:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return {(s.name, s.labels.get("volume", "")): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}
    with trio.fail_after(20):
        while (await trio.to_thread.run_sync(scrape)).get(("ferry_volume_fsync_seconds_count", "v"), 0) < 2:
            await trio.sleep(0.2)
    assert (await trio.to_thread.run_sync(scrape))[("ferry_volume_mounts", "v")] == 1
    assert (await ap.call("/VolumeDriver.Unmount", {"Name": "v", "ID": "c1"}))["Err"] == ""
    assert not in_proc_mounts(mp)
    st = json.loads((ap.tmp / "h1" / "cache" / "v" / "status.json").read_text())
    assert st["phase"] == "released"
    r = await ap.call("/VolumeDriver.Mount", {"Name": "v", "ID": "c2"})
    assert (mp / "two").read_bytes() == b"2"
    assert (await ap.call("/VolumeDriver.Unmount", {"Name": "v", "ID": "c2"}))["Err"] == ""


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
async def test_sigterm_stops_the_agent_cleanly_and_leaves_the_mount(agent_proc):
    """systemd and dockerd stop the agent with SIGTERM (as a managed plugin it is its
    container's init, where an unhandled SIGTERM is dropped): it exits 0, removes its
    socket, and the volume's daemon serves on for the next agent to adopt."""
    ap = agent_proc
    await ap.start()
    assert (await ap.call("/VolumeDriver.Create", {"Name": "v"}))["Err"] == ""
    mp = Path((await ap.call("/VolumeDriver.Mount", {"Name": "v", "ID": "c1"}))["Mountpoint"])
    ap.proc.send_signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(lambda: ap.proc.wait(timeout=20)) == 0, ap.log()
    assert "SIGTERM, stopping" in ap.log() and not ap.sock.exists()
    assert in_proc_mounts(mp)
    await ap.start()
    assert "adopted fsd" in ap.log()
    assert (await ap.call("/VolumeDriver.Unmount", {"Name": "v", "ID": "c1"}))["Err"] == ""
