"""Failover after host loss: how long until a volume is usable on another host.

Not a test. Three `ferry control serve` replicas over a three-member etcd
(Debian's etcd-server), two real agents (in this process, real FUSE mounts,
the file:// store) A and B. Each trial: A mounts a volume and fsyncs a file;
then A's host is lost at once (its agent stops, its filesystem daemon is
SIGKILLed, nothing is released); B is asked to Mount the volume right away
(as Docker would on a rescheduled container) and, once mounted, writes and
fsyncs. Printed per lease TTL: the time from the loss to B's Mount answer
and to B's first fsync, and that the data A acknowledged is there.

    .venv/bin/python bench/failover.py                  # TTL 10 s (default) and 3 s, 3 trials each
    .venv/bin/python bench/failover.py --ttl 10 --ttl 3 --trials 5

Run as root (FUSE). The control replicas run with --lease-ttl TTL and a
heartbeat of TTL/5 (the default ratio: 10 s and 2 s).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fsd.rundir import registry_path  # noqa: E402
from tests.agent.harness import TOKEN, RunningAgent, agent_config, cleanup_mounts  # noqa: E402
from tests.helpers.etcd import EtcdCluster  # noqa: E402
from tests.helpers.mount import write_fsync  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_replicas(d: Path, etcd: EtcdCluster, ttl: float) -> tuple[list[subprocess.Popen], str]:
    token = d / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    procs, addrs = [], []
    for i in range(3):
        port = free_port()
        with open(d / f"replica{i}.log", "wb") as log:   # the child has its own copy of the descriptor
            procs.append(subprocess.Popen([sys.executable, "-m", "cli", "control", "serve", "--listen",
                                           f"127.0.0.1:{port}", "--state", etcd.url(), "--token-file", str(token),
                                           "--lease-ttl", str(ttl), "--heartbeat", str(ttl / 5)],
                                          stdout=log, stderr=log, cwd=Path(__file__).resolve().parents[1],
                                          start_new_session=True))
        addrs.append(f"127.0.0.1:{port}")
    for a in addrs:
        host, port = a.split(":")
        for _ in range(400):
            try:
                socket.create_connection((host, int(port)), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
    return procs, ",".join(addrs)


async def trial(nursery: trio.Nursery, d: Path, control: str, store: str, n: int) -> tuple[float, float]:
    vol = f"v{n}"
    a = RunningAgent(nursery, agent_config(d / f"t{n}", control, "a", store))
    b = RunningAgent(nursery, agent_config(d / f"t{n}", control, "b", store))
    a.cfg.heartbeat = b.cfg.heartbeat = 2.0        # the control service tells them the real period
    await a.start()
    await b.start()
    assert (await a.call("/VolumeDriver.Create", {"Name": vol}))["Err"] == ""
    r = await a.call("/VolumeDriver.Mount", {"Name": vol, "ID": "ca"})
    assert r["Err"] == "", r
    payload = os.urandom(100_000)
    await trio.to_thread.run_sync(write_fsync, Path(r["Mountpoint"]) / "acked", payload)
    pid = json.loads(registry_path(Path(r["Mountpoint"])).read_text())["pid"]
    await trio.sleep(1.0)
    # host A is lost: no release, no unmount, its daemon dies with the host
    lost = time.monotonic()
    await a.stop()
    os.kill(pid, signal.SIGKILL)
    r = await b.call("/VolumeDriver.Mount", {"Name": vol, "ID": "cb"}, timeout=150)
    mounted = time.monotonic() - lost
    assert r["Err"] == "", r
    mp = Path(r["Mountpoint"])
    await trio.to_thread.run_sync(write_fsync, mp / "b", b"b writes")
    first_fsync = time.monotonic() - lost
    assert (mp / "acked").read_bytes() == payload, "data A acknowledged is missing"
    assert (await b.call("/VolumeDriver.Unmount", {"Name": vol, "ID": "cb"}))["Err"] == ""
    await b.stop()
    return mounted, first_fsync


def run_ttl(ttl: float, trials: int) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="ferry-failover-") as tmp:
        d = Path(tmp)
        os.environ["FERRY_RUN_DIR"] = str(d / "run")
        (d / "run").mkdir()
        etcd = EtcdCluster(d / "etcd", members=3)
        etcd.start()
        procs, control = start_replicas(d, etcd, ttl)
        store = d / "store"
        store.mkdir()
        out: list[tuple[float, float]] = []

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for n in range(trials):
                    out.append(await trial(nursery, d, control, f"file://{store}", n))
                    print(f"TTL {ttl:g}s trial {n + 1}: Mount on the other host after {out[-1][0]:.2f}s, "
                          f"first fsync after {out[-1][1]:.2f}s")
                nursery.cancel_scope.cancel()
        try:
            trio.run(main)
        finally:
            cleanup_mounts(d, d / "run")
            for p in procs:
                p.kill()
                p.wait()
            etcd.stop()
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ttl", type=float, action="append", help="lease TTL in seconds (repeatable; default 10 and 3)")
    p.add_argument("--trials", type=int, default=3)
    args = p.parse_args()
    results = {ttl: run_ttl(ttl, args.trials) for ttl in (args.ttl or [10.0, 3.0])}
    print("\n| lease TTL | Mount elsewhere (median, max) | first fsync (median, max) | target |")
    print("|---:|---:|---:|---|")
    for ttl, rs in results.items():
        m = sorted(x[0] for x in rs)
        f = sorted(x[1] for x in rs)
        print(f"| {ttl:g} s | {m[len(m) // 2]:.2f} s, {m[-1]:.2f} s | {f[len(f) // 2]:.2f} s, {f[-1]:.2f} s "
              f"| <= TTL + 2 s: {'met' if m[-1] <= ttl + 2 else 'not met'} |")


if __name__ == "__main__":
    main()
