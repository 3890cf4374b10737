"""Control-plane benchmark: simulated agents heartbeating against the control service.

Not a test. Starts the control plane as in production - `ferry control serve`
on SQLite, and/or three `ferry control serve` replicas over a three-member
etcd cluster (Debian's etcd-server) - then, from this process, N simulated
agents (the real `control.client.ControlClient`, one per agent, given every
replica with its own first choice so the load spreads): each registers,
acquires its share of the volumes, and heartbeats every `--heartbeat`
seconds (jittered) reporting all its volumes, for `--duration` seconds.
Prints latency percentiles of the heartbeat (= bulk lease renewal) and of
lease.acquire for each backend, side by side.

With etcd, halfway through the run one replica is killed (SIGKILL): the
agents that used it fail over to the next, and the bench prints how long
they went without an answered heartbeat (target: less than the lease TTL).

    .venv/bin/python bench/control_plane.py                          # both backends, 1000 agents, 10000 volumes
    .venv/bin/python bench/control_plane.py --backend etcd --agents 100 --volumes 1000 --duration 10

Note: the simulated agents share this machine's cores with the services (and
etcd), so the figures include client-side scheduling delay (an upper bound).
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
from typing import Any

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


def start_service(state_dir: Path, name: str, state_url: str, port: int, ttl: float,
                  heartbeat: float) -> subprocess.Popen:
    (state_dir / "token").write_text(TOKEN)
    (state_dir / "token").chmod(0o600)
    with open(state_dir / f"{name}.log", "wb") as log:   # the child has its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "cli", "control", "serve", "--listen", f"127.0.0.1:{port}",
                                 "--state", state_url, "--token-file", str(state_dir / "token"),
                                 "--lease-ttl", str(ttl), "--heartbeat", str(heartbeat)],
                                stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[1],
                                start_new_session=True)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"control service did not start; see {state_dir / (name + '.log')}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(args: argparse.Namespace, addrs: list[str], replicas: list[subprocess.Popen]) -> dict[str, Any]:
    """One backend's run; returns its figures."""
    out: dict[str, Any] = {}
    n, nv = args.agents, args.volumes
    per = [list(range(i, nv, n)) for i in range(n)]
    # each agent lists every replica, starting with its own (as an operator spreads agents)
    clients = [ControlClient(",".join(addrs[a % len(addrs):] + addrs[:a % len(addrs)]), TOKEN, timeout=60)
               for a in range(n)]
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
    kill_at = warm_until + args.duration / 2 if len(replicas) > 1 and not args.no_kill else None
    killed: list[float] = []
    gaps: dict[int, float] = {}         # agent -> seconds without an answered heartbeat across the kill
    last_ok: dict[int, float] = {}

    async def killer() -> None:
        if kill_at is None:
            return
        await trio.sleep(max(0.0, kill_at - time.monotonic()))
        replicas[0].send_signal(signal.SIGKILL)
        killed.append(time.monotonic())
        print(f"killed replica 0 ({addrs[0]}) at t={killed[0] - warm_until:.1f}s")

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
                done = time.monotonic()
                if killed and a % len(addrs) == 0 and a not in gaps and a in last_ok:
                    gaps[a] = done - last_ok[a]       # its replica was killed: the gap it saw
                last_ok[a] = done
            except Exception as e:  # noqa: BLE001 - counted and shown, the bench continues
                errors += 1
                if errors < 5:
                    print(f"heartbeat error: {e}")
            (hb_lat if t >= warm_until else hb_warm).append(time.monotonic() - t)
            await trio.sleep(max(0.0, args.heartbeat * rng.uniform(0.9, 1.1) - (time.monotonic() - t)))

    t0 = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(killer)
        for a in range(n):
            nursery.start_soon(agent_loop, a)
    took = time.monotonic() - t0 - args.warmup
    out["heartbeat"] = hb_lat
    out["errors"] = errors
    if gaps:
        g = sorted(gaps.values())
        out["failover"] = g
        print(f"agents of the killed replica: {len(g)}; time without an answered heartbeat: "
              f"p50 {pct(g, 50):.2f}s  p99 {pct(g, 99):.2f}s  max {g[-1]:.2f}s (heartbeat {args.heartbeat:g}s, "
              f"TTL {max(10.0, 5 * args.heartbeat):g}s)")
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
    out["acquire"] = acq_lat
    return out


def run_backend(args: argparse.Namespace, backend: str, d: Path) -> dict[str, Any]:
    ttl = max(10.0, 5 * args.heartbeat)
    procs: list[subprocess.Popen] = []
    etcd = None
    try:
        if backend == "sqlite":
            ports = [free_port()]
            procs.append(start_service(d, "control", f"sqlite:{d / 'control.db'}", ports[0], ttl, args.heartbeat))
        else:
            from tests.helpers.etcd import EtcdCluster
            etcd = EtcdCluster(d / "etcd", members=3)
            etcd.start()
            ports = [free_port() for _ in range(3)]
            for i, port in enumerate(ports):
                procs.append(start_service(d, f"replica{i}", etcd.url(), port, ttl, args.heartbeat))
        print(f"\n== {backend}: {len(procs)} control service(s), {args.agents} agents, {args.volumes} volumes, "
              f"{os.cpu_count()} CPUs")
        return trio.run(run, args, [f"127.0.0.1:{p}" for p in ports], procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if etcd is not None:
            etcd.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "etcd", "both"], default="both")
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--volumes", type=int, default=10000)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of steady-state heartbeats")
    p.add_argument("--heartbeat", type=float, default=2.0)
    p.add_argument("--warmup", type=float, default=4.0, help="seconds of heartbeats left out of the figures")
    p.add_argument("--concurrency", type=int, default=64, help="parallel requests during setup")
    p.add_argument("--no-kill", action="store_true", help="do not kill a replica halfway (etcd)")
    p.add_argument("--state-dir", help="where the state goes (default a temp dir)")
    args = p.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8 * args.agents + 256)), hard))
    results = {}
    for backend in (["sqlite", "etcd"] if args.backend == "both" else [args.backend]):
        with tempfile.TemporaryDirectory(prefix=f"ferry-cp-bench-{backend}-", dir=args.state_dir) as d:
            results[backend] = run_backend(args, backend, Path(d))
    print("\n| backend | heartbeat p50 | p99 | lease.acquire p50 | p99 | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for b, r in results.items():
        hb, aq = [x * 1000 for x in r["heartbeat"]], [x * 1000 for x in r["acquire"]]
        print(f"| {b} | {pct(hb, 50):.1f} ms | {pct(hb, 99):.1f} ms | {pct(aq, 50):.1f} ms | {pct(aq, 99):.1f} ms "
              f"| {r['errors']} |")


if __name__ == "__main__":
    main()
