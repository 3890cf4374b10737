"""Simulated hosts on one machine, for the multi-host tests.

Each `SimHost` is a network namespace joined to a test bridge by a veth pair,
plus its own persistent mount namespace (held by an anchor process), so that
its FUSE mounts are invisible to the other hosts and to the test process.
Everything the test runs "on" a host enters both namespaces with nsenter.

The root namespace holds the bridge with two addresses: `.1` for the object
store (moto_server) and `.2` for the control service, so a test can cut a
host off from the control service alone (a blackhole route to `.2` inside
the host) while it still reaches the store: the partitioned-owner case.

Unix sockets are files: the agents' plugin sockets live under the test's
tmp dir on the root filesystem, so the test process can talk to them
directly, like Docker on that host would.

Cleanup kills every process in the host's namespaces (kill -9: a dead host),
which also releases its mounts, then deletes namespaces, links and bridge;
names carry the test process's pid, and leftovers of earlier runs (a pid no
longer alive) are swept first.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

PREFIX = "fcl"          # namespaces fcl<pid>-<host>, bridge fcl<pid>br, veths fcl<pid><i>v/p


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def sweep_leftovers() -> None:
    """Remove namespaces and links of earlier test runs whose process is gone."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX) and not _owner_alive(name):
            for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
                _kill(int(pid))
            sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(PREFIX) and not _owner_alive(name):
                sh("ip", "link", "del", name, check=False)


def _owner_alive(name: str) -> bool:
    try:
        pid = int(name[len(PREFIX):len(PREFIX) + 7])
    except ValueError:
        return False
    return pid == os.getpid() or Path(f"/proc/{pid}").exists()


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Bridge:
    def __init__(self) -> None:
        self.tag = f"{PREFIX}{os.getpid() % 10_000_000:07d}"
        self.name = f"{self.tag}br"
        self.subnet = 20 + os.getpid() % 200
        self.store_ip = f"10.231.{self.subnet}.1"
        self.control_ip = f"10.231.{self.subnet}.2"
        sh("ip", "link", "add", self.name, "type", "bridge")
        sh("ip", "addr", "add", f"{self.store_ip}/24", "dev", self.name)
        sh("ip", "addr", "add", f"{self.control_ip}/24", "dev", self.name)
        sh("ip", "link", "set", self.name, "up")

    def delete(self) -> None:
        sh("ip", "link", "del", self.name, check=False)


class SimHost:
    def __init__(self, bridge: Bridge, index: int, name: str, workdir: Path) -> None:
        self.name = name
        self.ns = f"{bridge.tag}-{name}"
        self.ip = f"10.231.{bridge.subnet}.{10 + index}"
        self.bridge = bridge
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.veth_root = f"{bridge.tag}{index}v"
        veth_host = f"{bridge.tag}{index}p"
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.veth_root, "type", "veth", "peer", "name", veth_host)
        sh("ip", "link", "set", veth_host, "netns", self.ns)
        sh("ip", "link", "set", self.veth_root, "master", bridge.name, "up")
        sh("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.ip}/24", "dev", veth_host)
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", veth_host, "up")
        sh("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        # The anchor holds the host's private mount namespace for its lifetime.
        # Not `ip netns exec`: it remounts /sys for the netns, which hides the
        # cgroup mounts dockerd needs. unshare makes the mount namespace, then
        # nsenter joins the network namespace and execs sleep: only once the
        # anchor IS sleep is its mount namespace the host's for good.
        self.anchor = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--",
             "nsenter", f"--net=/run/netns/{self.ns}", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while _comm(self.anchor.pid) != "sleep" or self._mnt_ns() == _mnt_ns_of(os.getpid()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {name}: its mount namespace did not appear")
            time.sleep(0.02)
        self.procs: list[subprocess.Popen] = []

    def _mnt_ns(self) -> str:
        return _mnt_ns_of(self.anchor.pid)

    def argv(self, *argv: str) -> list[str]:
        """`argv` run inside this host's network and mount namespaces."""
        return ["nsenter", f"--target={self.anchor.pid}", "--mount", "--net", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 60, env: dict | None = None,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv(*argv), capture_output=True, timeout=timeout, env=env, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"on {self.name}: {' '.join(argv)} failed ({r.returncode}): "
                               f"{r.stderr.decode(errors='replace').strip()}")
        return r

    def popen(self, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "ab") as f:
            p = subprocess.Popen(self.argv(*argv), stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                 env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def python(self, code: str, *args: str, timeout: float = 60) -> str:
        """Run Python code on this host (sees its mounts); returns stdout."""
        import sys
        r = self.run(sys.executable, "-c", code, *args, timeout=timeout)
        return r.stdout.decode()

    def private_tmpfs(self, path: str) -> None:
        """A tmpfs at `path` seen only by this host (e.g. /run/docker/plugins,
        so each host's dockerd discovers only its own agent)."""
        os.makedirs(path, exist_ok=True)
        self.run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", path)

    def link_down(self) -> None:
        sh("ip", "link", "set", self.veth_root, "down")

    def link_up(self) -> None:
        sh("ip", "link", "set", self.veth_root, "up")

    def cut_from_control(self) -> None:
        """Partition this host from the control service only (it still reaches the store)."""
        sh("ip", "netns", "exec", self.ns, "ip", "route", "add", "blackhole", f"{self.bridge.control_ip}/32")

    def pids(self) -> list[int]:
        """Every process in this host's network namespace except the anchor."""
        out = sh("ip", "netns", "pids", self.ns, check=False).stdout.split()
        return [int(p) for p in out if int(p) != self.anchor.pid]

    def kill_all(self) -> None:
        """Host loss: kill -9 everything running on it (agent, fsd daemons, ...)."""
        for _ in range(5):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                _kill(pid)
            time.sleep(0.1)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)

    def destroy(self) -> None:
        self.kill_all()
        # FUSE mounts die with the namespace's last process; abort any that a
        # stuck daemon still holds so nothing can hang.
        _kill(self.anchor.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.anchor.wait(timeout=5)
        sh("ip", "link", "del", self.veth_root, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _mnt_ns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return ""


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("plugin", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def plugin_call(sock: Path, endpoint: str, body: Any, timeout: float = 130) -> dict:
    """One Docker plugin request (POST JSON over the unix socket)."""
    c = _UnixHTTP(str(sock), timeout)
    try:
        c.request("POST", "/" + endpoint, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return json.loads(r.read())
    finally:
        c.close()
