"""Hostile and broken clients against the control service (control/listener.py).

What a peer without the cluster token can cost the service is bounded:
a frame of at most 64 KiB, a first request within the auth deadline, five
refusals of any kind, a bounded number of unauthenticated connections (the
oldest is dropped for a new one), and a frame must be finished in time.
Each test here sends what an attacker would and checks that the service
refuses it, changes nothing, and keeps serving a real client.
"""
from __future__ import annotations

import contextlib
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from control import protocol as P
from control.client import ControlClient
from control.leases import Config
from control.listener import Limits
from control.server import ControlServer
from control.sqlite_state import SqliteState
from tests.helpers.net import wait_listening

from .conftest import TOKEN, Running
from .test_server import raw_call, req


@pytest.fixture
async def tight(nursery, tmp_path):
    """A control service with small limits, so the tests run in a second."""
    state = SqliteState(tmp_path / "control.db")
    limits = Limits(auth_deadline=0.5, frame_deadline=0.5, idle_timeout=1.0, max_unauthenticated=8,
                    max_connections=64)
    server = ControlServer(state, TOKEN, Config(ttl=2.0, heartbeat=0.5), limits=limits)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    yield Running(server, port)
    await state.aclose()


async def _closed(stream: trio.SocketStream, within: float = 5.0) -> bytes:
    """Read until the server closes the connection; what it sent."""
    out = bytearray()
    with trio.fail_after(within):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return bytes(out)
            if not chunk:
                return bytes(out)
            out += chunk


async def test_an_unauthenticated_big_frame_is_refused_from_its_header(tight):
    s = await trio.open_tcp_stream("127.0.0.1", tight.port)
    await s.send_all(P.HEADER.pack(16 << 20) + b"\x80" * 1000)      # "16 MiB of empty maps follow"
    got = await _closed(s)
    fb = P.FrameBuffer()
    fb.feed(got)
    answer = P.unpack(fb.next_frame())
    assert answer["error"]["code"] == "bad_request" and "before authentication" in answer["error"]["message"]
    # the same frame size is fine once the connection carried the token
    async with tight.client() as c:
        big = {f"k{i}": "x" * 100 for i in range(1000)}              # about 110 KiB of labels
        with pytest.raises(Exception) as e:
            await c.volume_create("v", labels=big)
        assert "labels" in str(e.value)                             # refused by the rules, not the size


async def test_garbage_before_the_token_counts_toward_the_cut_off(tight):
    frames = b"".join(P.HEADER.pack(3) + b"\xc1\xc1\xc1" for _ in range(8))   # not msgpack
    r = await raw_call(tight.port, frames, expect_frames=8)
    assert len(r) == 5 and all(x["error"]["code"] == "bad_request" for x in r)


async def test_idle_and_trickling_peers_are_cut_off(tight):
    idle = await trio.open_tcp_stream("127.0.0.1", tight.port)
    trickle = await trio.open_tcp_stream("127.0.0.1", tight.port)
    frame = req("ping")
    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        async def drip():
            try:
                for b in frame:
                    await trickle.send_all(bytes([b]))
                    await trio.sleep(0.2)
            except trio.BrokenResourceError:
                pass
        n.start_soon(drip)
        assert await _closed(idle) == b""
        assert await _closed(trickle) == b""
    assert trio.current_time() - t0 < 4
    # an authenticated connection that goes quiet is closed too; the client reconnects by itself
    async with tight.client() as c:
        await c.ping()
        await trio.sleep(1.5)
        assert (await c.ping())["version"] == 1


async def test_a_flood_of_unauthenticated_connections_does_not_lock_out_a_real_client(tight):
    socks = []
    try:
        for _ in range(40):                        # five times the unauthenticated limit
            socks.append(await trio.open_tcp_stream("127.0.0.1", tight.port))
        await trio.sleep(0.05)
        lst = tight.server.listener
        assert lst.unauthenticated <= lst.limits.max_unauthenticated
        async with tight.client() as c:
            for _ in range(5):
                assert (await c.ping())["version"] == 1
    finally:
        for s in socks:
            await trio.aclose_forcefully(s)


async def test_refusals_are_logged_with_the_peer_and_strings_are_escaped(tight, caplog):
    caplog.set_level(logging.INFO, logger="ferry.control")
    await raw_call(tight.port, req("ping", token="wrong"))
    assert any("refused before authentication" in r.getMessage() and "127.0.0.1" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    async with tight.client() as c:
        await c.host_register("h")
        res = await c.removal_done("root\nERROR forged line", "h")
    assert res == {"done": False}
    lines = "\n".join(r.getMessage() for r in caplog.records)
    assert "forged" not in lines or "\\n" in lines            # never a raw newline from a caller
    assert "volume deleted" not in lines                      # nothing was deleted


async def test_oversized_numbers_are_refused_clearly(tight):
    async with tight.client() as c:
        for size, needle in (("99999999999999999999999999G", "too large"), ("9" * 400, "not a size")):
            with pytest.raises(Exception) as e:
                await c.volume_create("v", {"layout": "block", "size": size})
            assert getattr(e.value, "code", None) == "bad_request" and needle in str(e.value), e.value
        assert await c.volume_list() == []


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_real_service_keeps_its_memory_and_latency_under_attack(tmp_path):
    """`ferry control serve` as a process: twelve unauthenticated 16 MiB frames
    (8 MiB of each sent) and 1,000 idle or trickling connections. Bounds: its
    memory grows by less than 64 MiB (it grew by the 96 MiB it was sent before
    control/listener.py), and a real client's ping is answered within 2 s throughout."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    token = tmp_path / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    import socket as pysocket
    with pysocket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(tmp_path / "control.log", "wb") as log:   # the child has its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "cli", "control", "serve", "--listen", f"127.0.0.1:{port}",
                                 "--state", f"sqlite:{tmp_path / 'c.db'}", "--token-file", str(token)],
                                stdout=subprocess.DEVNULL, stderr=log, cwd=Path(__file__).parents[2])
    socks: list[pysocket.socket] = []
    try:
        wait_listening("127.0.0.1", port, proc, tmp_path / "control.log", timeout=20)
        rss0 = _rss_kib(proc.pid)

        async def attack_and_measure() -> list[float]:
            lat: list[float] = []
            async with ControlClient(f"127.0.0.1:{port}", TOKEN, timeout=5) as c:
                for _ in range(12):                             # 12 frames "of 16 MiB", 8 MiB sent of each
                    big = pysocket.create_connection(("127.0.0.1", port))
                    big.settimeout(3)
                    socks.append(big)
                    # refused from the header on: closed
                    with contextlib.suppress(OSError):
                        big.sendall(P.HEADER.pack(16 << 20) + b"\x80" * (8 << 20))
                for i in range(1000):
                    s = pysocket.create_connection(("127.0.0.1", port))
                    if i % 2:
                        s.sendall(P.HEADER.pack(40))            # a frame that never completes
                    socks.append(s)
                    if i % 100 == 0:
                        t = time.monotonic()
                        await c.ping()
                        lat.append(time.monotonic() - t)
                for _ in range(10):
                    t = time.monotonic()
                    await c.ping()
                    lat.append(time.monotonic() - t)
            return lat
        lat = trio.run(attack_and_measure)
        grown = (_rss_kib(proc.pid) - rss0) / 1024
        assert grown < 64, f"control service grew by {grown:.0f} MiB under attack"
        assert max(lat) < 2.0, f"a real client waited {max(lat):.2f}s"
    finally:
        for s in socks:
            s.close()
        proc.kill()
        proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
