"""Real etcd clusters for tests: Debian's etcd-server on loopback ports.

`EtcdCluster(dir, n)` starts n members that form one cluster; `kill(i)` is
an outage (SIGKILL), `start(i)` brings a member back with its data, and
`leader()` names the member that leads. Elections are tuned short (50 ms
heartbeats, 500 ms election timeout) so a killed leader is replaced in about
a second, as on a healthy LAN. Members run in their own process groups and
are killed at teardown and, if the test session dies first, at exit.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_live: set[EtcdCluster] = set()


@atexit.register
def _kill_leftovers() -> None:
    for c in list(_live):
        c.stop()


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdCluster:
    def __init__(self, base: Path, members: int = 1):
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd not found: install Debian's etcd-server (scripts/install.sh --tests does)")
        self.binary = binary
        self.base = base
        self.n = members
        ports = _free_ports(2 * members)
        self.client_ports = ports[:members]
        self.peer_ports = ports[members:]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * members
        self._initial = ",".join(f"m{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        self._started_once = [False] * members

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def url(self, prefix: str = "") -> str:
        return "etcd://" + ",".join(self.endpoints) + prefix

    def _args(self, i: int) -> list[str]:
        cp, pp = self.client_ports[i], self.peer_ports[i]
        return [self.binary, "--name", f"m{i}", "--data-dir", str(self.base / f"m{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{cp}", "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                "--listen-peer-urls", f"http://127.0.0.1:{pp}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                "--initial-cluster", self._initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", f"ferry-test-{self.client_ports[0]}",
                "--heartbeat-interval", "50", "--election-timeout", "500", "--logger", "zap",
                "--log-outputs", str(self.base / f"m{i}.log")]

    def start(self, i: int | None = None, timeout: float = 30) -> None:
        """Start member i (all members when None); return once the cluster answers."""
        self.base.mkdir(parents=True, exist_ok=True)
        for j in range(self.n) if i is None else [i]:
            p = self.procs[j]
            if p is not None and p.poll() is None:
                continue
            with open(self.base / f"m{j}.out", "ab") as out:
                self.procs[j] = subprocess.Popen(self._args(j), stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=out, start_new_session=True)
        _live.add(self)
        deadline = time.monotonic() + timeout
        for j in range(self.n) if i is None else [i]:
            while not self.healthy(j):
                p = self.procs[j]
                if p is not None and p.poll() is not None:
                    raise RuntimeError(f"etcd member m{j} exited with {p.returncode}; see {self.base}/m{j}.log")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member m{j} not healthy within {timeout}s; see {self.base}/m{j}.log")
                time.sleep(0.05)

    def _get(self, i: int, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.client_ports[i]}{path}", data=data,
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.loads(r.read())

    def healthy(self, i: int) -> bool:
        try:
            return self._get(i, "/health").get("health") == "true"
        except (OSError, ValueError):
            return False

    def running(self, i: int) -> bool:
        p = self.procs[i]
        return p is not None and p.poll() is None

    def leader(self) -> int:
        """Index of the member that leads now (waits up to 10 s for an election)."""
        deadline = time.monotonic() + 10
        ids: dict[str, int] = {}
        while True:
            for i in range(self.n):
                if not self.running(i):
                    continue
                try:
                    st = self._get(i, "/v3/maintenance/status", {})
                except (OSError, ValueError):
                    continue
                ids[st["header"]["member_id"]] = i
                lead = st.get("leader")
                if lead and lead in ids and self.running(ids[lead]):
                    return ids[lead]
            if time.monotonic() > deadline:
                raise RuntimeError("no etcd leader within 10 s")
            time.sleep(0.05)

    def kill(self, i: int) -> None:
        """SIGKILL member i (an outage; its data stays for start(i))."""
        p = self.procs[i]
        if p is not None and p.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop(self) -> None:
        for i in range(self.n):
            self.kill(i)
        _live.discard(self)


@contextmanager
def running_cluster(base: Path, members: int) -> Iterator[EtcdCluster]:
    """An EtcdCluster of `members`, started, and stopped whatever happens."""
    cluster = EtcdCluster(base, members=members)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
