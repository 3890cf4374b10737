"""Control-plane benchmark: simulated agents heartbeating against one control service.

Not a test. Starts `ferry control serve` as a subprocess (its own process, as in
production), then, from this process, N simulated agents (one connection
each, the real `control.client.ControlClient`): each registers, acquires its
share of the volumes, and heartbeats every `--heartbeat` seconds (jittered)
reporting all its volumes, for `--duration` seconds. Prints latency
percentiles of the heartbeat (= bulk lease renewal) and of lease.acquire.

    /opt/ferry-venv/bin/python bench/control_plane.py                 # 1000 agents, 10000 volumes, 30 s
    /opt/ferry-venv/bin/python bench/control_plane.py --agents 100 --volumes 1000 --duration 10

Note: the simulated agents share this machine's cores with the service, so
the figures include client-side scheduling delay (an upper bound).
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from control.client import ControlClient  # noqa: E402

TOKEN = "bench-token-0123456789"


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def summary(name: str, xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return (f"{name:28} n={len(ms):7d}  p50={pct(ms, 50):7.2f} ms  p90={pct(ms, 90):7.2f} ms  "
            f"p99={pct(ms, 99):7.2f} ms  max={max(ms, default=float('nan')):7.2f} ms")


def start_service(state_dir: Path, port: int, ttl: float, heartbeat: float) -> subprocess.Popen:
    (state_dir / "token").write_text(TOKEN)
    (state_dir / "token").chmod(0o600)
    log = open(state_dir / "control.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "fsd.cli", "control", "serve", "--listen", f"127.0.0.1:{port}",
                             "--state", f"sqlite:{state_dir / 'control.db'}", "--token-file",
                             str(state_dir / "token"), "--lease-ttl", str(ttl), "--heartbeat", str(heartbeat)],
                            stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[1],
                            start_new_session=True)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("control service did not start; see " + str(state_dir / "control.log"))


async def run(args: argparse.Namespace, addr: str) -> None:
    n, nv = args.agents, args.volumes
    per = [list(range(i, nv, n)) for i in range(n)]
    clients = [ControlClient(addr, TOKEN, timeout=60) for _ in range(n)]
    limit = trio.CapacityLimiter(args.concurrency)

    t0 = time.monotonic()
    create_lat: list[float] = []

    async def create(i: int) -> None:
        async with limit:
            t = time.monotonic()
            await clients[i % n].volume_create(f"vol{i:05d}", {"durability": "local"} if i % 2 else {})
            create_lat.append(time.monotonic() - t)
    async with trio.open_nursery() as nursery:
        for i in range(nv):
            nursery.start_soon(create, i)
    print(f"setup: created {nv} volumes in {time.monotonic() - t0:.1f}s")
    print(summary("volume.create", create_lat))

    t0 = time.monotonic()
    acq_lat: list[float] = []

    async def agent_setup(a: int) -> None:
        async with limit:
            await clients[a].host_register(f"host{a:04d}", f"10.0.{a // 256}.{a % 256}", "bench")
            for v in per[a]:
                t = time.monotonic()
                r = await clients[a].lease_acquire(f"vol{v:05d}", f"host{a:04d}")
                acq_lat.append(time.monotonic() - t)
                assert r["status"] == "granted", r
    async with trio.open_nursery() as nursery:
        for a in range(n):
            nursery.start_soon(agent_setup, a)
    print(f"setup: {n} hosts registered, {nv} leases granted in {time.monotonic() - t0:.1f}s")
    print(summary("lease.acquire (new grant)", acq_lat))

    hb_lat: list[float] = []
    hb_warm: list[float] = []
    errors = 0
    warm_until = time.monotonic() + args.warmup
    stop_at = time.monotonic() + args.duration + args.warmup

    async def agent_loop(a: int) -> None:
        nonlocal errors
        rng = random.Random(a)
        reports = [{"name": f"vol{v:05d}", "in_use": True, "epoch": 1, "upload_lag_s": 0.0} for v in per[a]]
        await trio.sleep(rng.uniform(0, args.heartbeat))
        while time.monotonic() < stop_at:
            for r in reports:
                r["upload_lag_s"] = round(rng.uniform(0, 3), 2)
            t = time.monotonic()
            try:
                res = await clients[a].host_heartbeat(f"host{a:04d}", reports)
                assert not res["lost"], res
            except Exception as e:  # noqa: BLE001 - counted and shown, the bench continues
                errors += 1
                if errors < 5:
                    print(f"heartbeat error: {e}")
            (hb_lat if t >= warm_until else hb_warm).append(time.monotonic() - t)
            await trio.sleep(max(0.0, args.heartbeat * rng.uniform(0.9, 1.1) - (time.monotonic() - t)))

    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        for a in range(n):
            nursery.start_soon(agent_loop, a)
    took = time.monotonic() - t0 - args.warmup
    print(summary("host.heartbeat (first round)", hb_warm) + "   <- first reports of in_use/epoch")
    print(f"steady state: {n} agents x {nv // n} volumes, heartbeat every {args.heartbeat:g}s for "
          f"{args.duration:g}s: {len(hb_lat)} heartbeats ({len(hb_lat) / took:.0f}/s, "
          f"{len(hb_lat) * nv / n / took:.0f} lease renewals/s), {errors} errors")
    print(summary("host.heartbeat (renew)", hb_lat))

    renew_lat: list[float] = []
    t0 = time.monotonic()
    for a in range(0, n, max(1, n // 200)):
        t = time.monotonic()
        await clients[a].lease_acquire(f"vol{per[a][0]:05d}", f"host{a:04d}")
        renew_lat.append(time.monotonic() - t)
    print(summary("lease.acquire (idempotent)", renew_lat))
    t = time.monotonic()
    st = await clients[0].status()
    print(f"status with {len(st['hosts'])} hosts / {len(st['volumes'])} volumes: "
          f"{(time.monotonic() - t) * 1000:.0f} ms")
    for c in clients:
        await c.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--volumes", type=int, default=10000)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of steady-state heartbeats")
    p.add_argument("--heartbeat", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of heartbeats left out of the figures")
    p.add_argument("--concurrency", type=int, default=64, help="parallel requests during setup")
    p.add_argument("--state-dir", help="where the SQLite state goes (default a temp dir)")
    args = p.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.agents + 256)), hard))
    with tempfile.TemporaryDirectory(prefix="ferry-cp-bench-", dir=args.state_dir) as d:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        proc = start_service(Path(d), port, ttl=max(10.0, 5 * args.heartbeat), heartbeat=args.heartbeat)
        try:
            print(f"ferry control plane benchmark: {args.agents} agents, {args.volumes} volumes, "
                  f"{os.cpu_count()} CPUs, state {d}/control.db")
            trio.run(run, args, f"127.0.0.1:{port}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
