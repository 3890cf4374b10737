"""Test harness for the agent: an in-process control service, in-process
agents, a tiny HTTP client for the plugin socket, and cleanup that leaves no
mount and no daemon behind even when a test fails."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import h11
import trio

from agent.service import Agent, AgentConfig
from control.client import ControlClient
from control.leases import Config
from control.server import ControlServer
from control.sqlite_state import SqliteState

TOKEN = "test-token-0123456789"


async def post(sock: Path, path: str, obj: Any = None, raw: bytes | None = None,
               timeout: float = 150) -> tuple[int, dict[str, Any]]:
    """One POST over the unix socket, as Docker sends it."""
    data = raw if raw is not None else (b"" if obj is None else json.dumps(obj).encode())
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(str(sock))
        try:
            conn = h11.Connection(h11.CLIENT)
            await stream.send_all(
                conn.send(h11.Request(method="POST", target=path,
                                      headers=[("Host", "plugin"), ("Content-Length", str(len(data)))]))
                + conn.send(h11.Data(data=data)) + conn.send(h11.EndOfMessage()))
            status, ctype, body = 0, "", bytearray()
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(ev, h11.Response):
                    status = ev.status_code
                    ctype = dict(ev.headers).get(b"content-type", b"").decode()
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
        finally:
            await stream.aclose()
    assert ctype == "application/vnd.docker.plugins.v1.2+json", ctype
    return status, json.loads(body)


async def raw_exchange(sock: Path, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes."""
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(str(sock))
        try:
            await stream.send_all(data)
            out = bytearray()
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return bytes(out)
                out += chunk
        finally:
            await stream.aclose()


async def start_control(nursery: trio.Nursery, tmp: Path, ttl: float = 4.0, heartbeat: float = 1.0) -> str:
    server = ControlServer(SqliteState(tmp / "control.db"), TOKEN, Config(ttl=ttl, heartbeat=heartbeat))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return f"127.0.0.1:{port}"


def agent_config(tmp: Path, control: str, host: str, store_url: str) -> AgentConfig:
    base = tmp / host
    return AgentConfig(control=control, host_id=host, store_url=store_url, cache_dir=base / "cache",
                       socket=base / "plugin.sock", mount_root=base / "mnt", state_dir=base / "state",
                       token=TOKEN, heartbeat=1.0, monitor_interval=0.3, watch_timeout=5.0,
                       acquire_wait=10.0, in_use_wait=0.0)      # refusals at once; the wait has its own test


class RunningAgent:
    """An in-process agent that can be 'killed' (cancelled: fsd daemons keep running) and restarted."""

    def __init__(self, nursery: trio.Nursery, cfg: AgentConfig) -> None:
        self.nursery = nursery
        self.cfg = cfg
        self.scope: trio.CancelScope | None = None
        self.stopped = trio.Event()
        self.agent: Agent | None = None

    @property
    def sock(self) -> Path:
        return self.cfg.socket

    async def start(self) -> Agent:
        self.agent = Agent(self.cfg)
        self.stopped = stopped = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            try:
                with trio.CancelScope() as scope:
                    self.scope = scope
                    await self.agent.run(task_status=task_status)
            finally:
                stopped.set()
        await self.nursery.start(run)
        with trio.fail_after(10):
            await self.agent.registered.wait()
        return self.agent

    async def stop(self) -> None:
        """Cancel the agent and return once it has finished (its cleanup done)."""
        if self.scope is not None:
            self.scope.cancel()
            self.scope = None
            with trio.fail_after(30):
                await self.stopped.wait()

    async def call(self, path: str, obj: Any = None, **kw) -> dict[str, Any]:
        status, reply = await post(self.sock, path, obj, **kw)
        assert status == 200
        return reply


def control_client(addr: str) -> ControlClient:
    return ControlClient(addr, TOKEN)


def cleanup_mounts(root: Path, run_dir: Path) -> None:
    """Kill every daemon registered in run_dir and detach every FUSE mount under root. Never raises."""
    pids = []
    for p in (run_dir / "mounts").glob("*.json") if (run_dir / "mounts").exists() else []:
        # noqa: BLE001
        with contextlib.suppress(Exception):
            pids.append(json.loads(p.read_text())["pid"])
    root_s = os.path.abspath(root)
    with open("/proc/mounts") as f:
        mps = [line.split()[1] for line in f if line.split()[1].startswith(root_s + "/")]
    for mp in mps:
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)
