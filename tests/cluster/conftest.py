"""A small cluster for the multi-host tests: moto_server and the control
service in the root namespace (on the test bridge), one agent per simulated
host in its own network + mount namespace."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cluster.dockerd import Dockerd
from tests.cluster.netns import Bridge, SimHost, plugin_call, sweep_leftovers
from tests.conftest import _moto_binary, free_port, make_bucket
from tests.helpers.net import wait_listening

TOKEN = "multi-host-test-token"
LEASE_TTL = 3.0
HEARTBEAT = 0.5


def _need_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("multi-host tests need root (network namespaces)")
    for tool in ("ip", "nsenter", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


def _ferry() -> list[str]:
    return [sys.executable, "-m", "cli"]


class Agent:
    """`ferry agent serve` on one simulated host."""

    def __init__(self, cluster: Cluster, host: SimHost, sock: Path | None = None,
                 docker_host: str = "none", in_use_wait: float | None = None) -> None:
        self.cluster = cluster
        self.host = host
        self.docker_host = docker_host      # the host's dockerd API (tests/cluster/dockerd.py), or none
        self.in_use_wait = in_use_wait      # --in-use-wait (None: the agent's default)
        self.sock = sock or host.dir / "ferry.sock"     # a path inside the host's mount namespace
        self.mount_root = host.dir / "mnt"
        self.log = host.dir / "agent.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        c = self.cluster
        env = {**os.environ, "FERRY_RUN_DIR": str(self.host.dir / "run"), "FERRY_TOKEN": TOKEN}
        self.proc = self.host.popen(
            _ferry() + ["agent", "serve", "--control", c.control_addr, "--host-id", self.host.name,
                        "--store", c.store_url, "--cache-dir", str(self.host.dir / "cache"),
                        "--socket", str(self.sock), "--mount-root", str(self.mount_root),
                        "--state-dir", str(self.host.dir / "state"), "--address", self.host.ip,
                        "--docker-host", self.docker_host]
            + ([] if self.in_use_wait is None else ["--in-use-wait", str(self.in_use_wait)]),
            self.log, env=env)
        deadline = time.monotonic() + 30
        while self.host.run("test", "-S", str(self.sock), check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"agent on {self.host.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def call(self, endpoint: str, **body) -> dict:
        return plugin_call(self.sock, "VolumeDriver." + endpoint, body)

    def mountpoint(self, volume: str) -> Path:
        return self.mount_root / volume


class Cluster:
    def __init__(self, workdir: Path, lease_ttl: float = LEASE_TTL, heartbeat: float = HEARTBEAT) -> None:
        self.dir = workdir
        self.loops_before = attached_loops()
        self.lease_ttl = lease_ttl
        self.heartbeat = heartbeat
        self.bridge = Bridge()
        self.hosts: list[SimHost] = []
        self.agents: dict[str, Agent] = {}
        self.moto: subprocess.Popen | None = None
        self.control: subprocess.Popen | None = None
        port = free_port()
        self.moto_endpoint = f"http://{self.bridge.store_ip}:{port}"
        with open(workdir / "moto.log", "ab") as log:
            self.moto = subprocess.Popen([_moto_binary(), "-H", self.bridge.store_ip, "-p", str(port)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        _wait_http(self.moto_endpoint + "/moto-api/", self.moto)
        bucket = make_bucket(self.moto_endpoint)
        self.store_url = f"s3://{bucket}?endpoint={self.moto_endpoint}&region=us-east-1"
        self.control_addr = f"{self.bridge.control_ip}:{free_port()}"
        self.start_control()

    def start_control(self) -> None:
        env = {**os.environ, "FERRY_TOKEN": TOKEN}
        with open(self.dir / "control.log", "ab") as log:
            self.control = subprocess.Popen(
                _ferry() + ["control", "serve", "--listen", self.control_addr,
                            "--state", f"sqlite:{self.dir / 'control.db'}",
                            "--lease-ttl", str(self.lease_ttl), "--heartbeat", str(self.heartbeat)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        host, port = self.control_addr.split(":")
        wait_listening(host, int(port), self.control, self.dir / "control.log")

    def kill_control(self) -> None:
        if self.control is not None and self.control.poll() is None:
            os.killpg(self.control.pid, 9)
            self.control.wait()

    def add_host(self, name: str, docker: bool = False, in_use_wait: float | None = None) -> Agent:
        """A simulated host with a running agent; with `docker`, its plugin
        socket is at Docker's discovery path, private to the host."""
        host = SimHost(self.bridge, len(self.hosts), name, self.dir)
        self.hosts.append(host)
        sock = None
        docker_host = "none"
        if not docker and in_use_wait is None:
            in_use_wait = 0.0       # plugin calls by hand: a Mount of a volume in use elsewhere is refused at once
        if docker:
            host.private_tmpfs("/run/docker/plugins")
            sock = Path("/run/docker/plugins/ferry.sock")
            docker_host = f"unix://{Dockerd.api_socket(host)}"
        agent = Agent(self, host, sock, docker_host, in_use_wait)
        agent.start()
        if not docker:
            # Answering Activate means the plugin socket serves.
            assert plugin_call(agent.sock, "Plugin.Activate", {}) == {"Implements": ["VolumeDriver"]}
        self.agents[name] = agent
        return agent

    def ferry(self, *args: str) -> subprocess.CompletedProcess:
        """The operator CLI, from the root namespace."""
        env = {**os.environ, "FERRY_TOKEN": TOKEN, "FERRY_CONTROL": self.control_addr}
        return subprocess.run(_ferry() + list(args), capture_output=True, text=True, env=env, timeout=60)

    def destroy(self) -> None:
        for h in self.hosts:
            h.destroy()
        # Block volumes of dead hosts: their loop devices outlive the
        # namespaces, and their backing file's path is the dead namespace's
        # ("/image"), so detach every loop device attached since we started.
        for dev in attached_loops() - self.loops_before:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
        self.kill_control()
        if self.moto is not None and self.moto.poll() is None:
            os.killpg(self.moto.pid, 9)
            self.moto.wait()
        self.bridge.delete()

    def logs(self) -> str:
        parts = []
        for name, a in self.agents.items():
            if a.log.exists():
                parts.append(f"--- agent {name} ---\n{a.log.read_text(errors='replace')[-4000:]}")
        cl = self.dir / "control.log"
        if cl.exists():
            parts.append(f"--- control ---\n{cl.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)


def attached_loops() -> set[str]:
    out = set()
    for dev in Path("/sys/block").glob("loop*"):
        if (dev / "loop" / "backing_file").exists():
            out.add(f"/dev/{dev.name}")
    return out


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer") from None
            time.sleep(0.05)


@pytest.fixture
def cluster(tmp_path, request):
    _need_root_tools()
    sweep_leftovers()
    # /tmp/pytest-of-root/... is 0700: daemons run as root anyway, fine.
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            print(c.logs())
        c.destroy()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
