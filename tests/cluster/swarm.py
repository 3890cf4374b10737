"""A Swarm of simulated hosts for the Swarm tests and bench/swarm.py.

Each node is a host of tests/cluster/conftest.py's Cluster (network + mount
namespace, its own dockerd and ferry agent); the first inits the Swarm
(with a 1 s dispatcher heartbeat, so a lost node is noticed in seconds), the
others join as workers over the test bridge. Services run an fsync loop
whose acknowledgements land outside every volume (`AckLog`), so a test can
check that a moved task finds every acknowledged line, and time the move.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cluster import dockerd as dk

# swarmkit's node update period is 20 s: a node reports a plugin activated
# after it joined within about that long, then the scheduler retries.
CONVERGE_S = 120


class Swarm:
    """Nodes by name; the first is the manager."""

    def __init__(self, cluster: Any, in_use_wait: float | None = None, dispatcher_heartbeat: str | None = "1s") -> None:
        self.cluster = cluster
        self.in_use_wait = in_use_wait      # the agents' --in-use-wait (None: ferry's default)
        # A short dispatcher heartbeat: a lost node is noticed in seconds. None: Swarm's default (5 s).
        self.dispatcher_heartbeat = dispatcher_heartbeat
        self.nodes: dict[str, dk.Dockerd] = {}
        self.ids: dict[str, str] = {}
        self.dead: list[dk.Dockerd] = []

    def add(self, name: str) -> dk.Dockerd:
        """A new host with a dockerd and a host agent, in the Swarm."""
        agent = self.cluster.add_host(name, docker=True, in_use_wait=self.in_use_wait)
        return self.join(name, dk.Dockerd(agent.host))

    def join(self, name: str, d: dk.Dockerd) -> dk.Dockerd:
        """Put a host's running dockerd in the Swarm (the first one inits it)."""
        self.nodes[name] = d
        if len(self.nodes) == 1:
            beat = ["--dispatcher-heartbeat", self.dispatcher_heartbeat] if self.dispatcher_heartbeat else []
            d.docker("swarm", "init", "--advertise-addr", d.host.ip, *beat)
        else:
            manager = next(iter(self.nodes.values()))
            token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
            d.docker("swarm", "join", "--advertise-addr", d.host.ip, "--token", token,
                     f"{manager.host.ip}:2377")
        self.ids[name] = d.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        return d

    @property
    def manager(self) -> dk.Dockerd:
        return next(iter(self.nodes.values()))

    def service(self, *args: str) -> None:
        self.manager.docker("service", "create", "--detach", "--no-resolve-image", *args)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        out = self.manager.docker("service", "ps", "--no-trunc", "--format", "{{json .}}", service).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_running(self, service: str, timeout: float = CONVERGE_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            running = [t for t in self.tasks(service) if t["CurrentState"].startswith("Running")
                       and t["DesiredState"] == "Running"]
            if running:
                return running[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"service {service} has no running task after {timeout:.0f} s: "
                                     f"{self.tasks(service)}\n{self.cluster.logs()}")
            time.sleep(0.5)

    def container_on(self, node: str, service: str) -> str:
        out = self.nodes[node].docker("ps", "-q", "--filter",
                                      f"label=com.docker.swarm.service.name={service}").stdout.split()
        assert len(out) == 1, out
        return out[0]

    def kill_node(self, name: str) -> None:
        """Host loss: kill -9 every process of the node, its containers' too
        (they live in namespaces of their own, out of the host's reach)."""
        d = self.nodes[name]
        pids = d.docker("ps", "-q", check=False).stdout.split()
        container_pids = [d.docker("inspect", "-f", "{{.State.Pid}}", c, check=False).stdout.strip() for c in pids]
        d.host.kill_all()
        for pid in container_pids:
            if pid.isdigit() and int(pid) > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        d.proc.wait(timeout=30)
        del self.nodes[name]
        self.dead.append(d)

    def leave_all(self) -> None:
        for d in reversed(list(self.nodes.values())):
            d.docker("swarm", "leave", "--force", check=False, timeout=60)
            d.stop()


# The service's fsync loop: each line is appended to /data/log with an fsync
# (dd conv=fsync), then acknowledged in /ack/acked, a bind mount of one
# directory outside every volume (the simulated hosts share the test's
# filesystem). A line names its container and how many containers had
# started before it (a container restarted by its policy counts again), so
# the test sees which task wrote it and when the new task took over.
FSYNC_LOOP = (
    "trap 'exit 0' TERM; echo >> /ack/starts; H=$(cat /etc/hostname).$(wc -l < /ack/starts); i=0; "
    "while :; do i=$((i+1)); "
    "echo \"$H $i\" | dd of=/data/log oflag=append conv=notrunc,fsync 2>/dev/null || exit 1; "
    "echo \"$H $i\" >> /ack/acked; sleep 0.05; done"
)


class AckLog:
    """What the fsync loop acknowledged, read from outside (the test's own view)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.path = directory / "acked"
        self.path.touch()

    def lines(self) -> list[str]:
        return [ln for ln in self.path.read_text().splitlines() if ln.strip()]

    def writers(self) -> list[str]:
        """Writers (a container's short ID and start count) in the order they first acknowledged."""
        out: list[str] = []
        for ln in self.lines():
            h = ln.split()[0]
            if h not in out:
                out.append(h)
        return out

    def handover(self, timeout: float = CONVERGE_S, swarm: Swarm | None = None) -> float:
        """Wait for a second writer; the seconds between the first writer's
        last acknowledgement and the second's first, seen by polling."""
        first = self.writers()[0]
        count, last_change = len(self.lines()), time.monotonic()
        deadline = last_change + timeout
        while True:
            lines = self.lines()
            now = time.monotonic()
            if any(ln.split()[0] != first for ln in lines):
                return now - last_change
            if len(lines) != count:
                count, last_change = len(lines), now
            if now > deadline:
                extra = swarm.cluster.logs() if swarm is not None else ""
                raise AssertionError(f"no second task acknowledged an fsync within {timeout:.0f} s\n{extra}")
            time.sleep(0.02)

    def wait_for(self, cond: Callable[[], bool], what: str, timeout: float = CONVERGE_S,
                 swarm: Swarm | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                extra = swarm.cluster.logs() if swarm is not None else ""
                raise AssertionError(f"{what}: not within {timeout:.0f} s; acked so far "
                                     f"{len(self.lines())} lines from {self.writers()}\n{extra}")
            time.sleep(0.05)


def assert_every_ack_is_in(acked: list[str], log: str) -> None:
    """Each acknowledged line is in the volume's log; the log holds nothing
    that was never written (each line is "<container> <n>", n counting up
    per container)."""
    stored = [ln for ln in log.splitlines() if ln.strip()]
    present = set(stored)
    missing = [ln for ln in acked if ln not in present]
    assert not missing, f"{len(missing)} acknowledged line(s) lost, first {missing[:3]}"
    last: dict[str, int] = {}
    for ln in stored:
        h, n = ln.split()
        assert int(n) == last.get(h, 0) + 1, f"line {ln!r} out of sequence (after {last.get(h)})"
        last[h] = int(n)


def node_of(swarm: Swarm, task: dict[str, Any]) -> str:
    """The name of the node a task runs on (`service ps` shows the node's hostname, the same on
    every simulated host, so ask each dockerd which of them runs it)."""
    for name, d in swarm.nodes.items():
        if d.docker("ps", "-q", "--filter", f"label=com.docker.swarm.task.id={task['ID']}").stdout.strip():
            return name
    raise AssertionError(f"no node runs task {task['ID']}")


def start_fsync_service(swarm: Swarm, name: str, volume_mount: str, acks: AckLog, *extra: str) -> str:
    """Run the fsync loop as service `name` on the volume `volume_mount`
    (a --mount value); return the node of its task once it acknowledged 20 lines."""
    swarm.service("--name", name, *extra, "--mount", volume_mount,
                  "--mount", f"type=bind,source={acks.dir},target=/ack", dk.IMAGE, "sh", "-c", FSYNC_LOOP)
    first = swarm.wait_running(name)
    acks.wait_for(lambda: len(acks.lines()) >= 20, f"{name}: the first task acknowledges 20 lines", swarm=swarm)
    return node_of(swarm, first)


def check_moved(swarm: Swarm, name: str, acks: AckLog, lines: int = 10) -> None:
    """Once the moved task acknowledged `lines` lines of its own: every line
    acknowledged by either task is in the volume it now runs on."""
    acks.wait_for(lambda: sum(1 for ln in acks.lines() if ln.split()[0] == acks.writers()[1]) >= lines,
                  f"{name}: the moved task acknowledges {lines} lines", swarm=swarm)
    node = node_of(swarm, swarm.wait_running(name))
    cid = swarm.container_on(node, name)
    assert_every_ack_is_in(acks.lines(), swarm.nodes[node].docker("exec", cid, "cat", "/data/log").stdout)

