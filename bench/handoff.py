#!/usr/bin/env python3
"""Planned-move and failover times of ferry volumes between two hosts.

One command, as root, on one machine: a moto_server and the control service
on a test bridge, two simulated hosts (network + mount namespaces, the same
as tests/cluster uses), each running a real `ferry agent serve`; requests go
to the agents' plugin sockets exactly as Docker sends them.

  planned move  Mount on A, fill the volume (N files, S bytes, one fsync at
                the end), then time Unmount on A -> Mount returning on B.
                Target < 2 s and flat as the data grows (SPEC §2.6: a move
                carries metadata, not data).
  failover      Mount on A with fsynced data; cut A's link and kill -9 its
                agent and fsd; time from the kill to Mount returning on B.
                Target <= lease TTL + 5 s.

    python bench/handoff.py                       # 100 MiB/1,000 files, 1 GiB/10,000 files
    python bench/handoff.py --sizes 100M:1000,1G:10000,4G:10000

Writes bench/HANDOFF.md. A benchmark, not a test: it asserts nothing except
that the data read on B is the data written on A.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsd.options import parse_size  # noqa: E402
from tests.cluster.conftest import Cluster  # noqa: E402
from tests.cluster.netns import sweep_leftovers  # noqa: E402

FILL = """
import os, sys, hashlib
root, n, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = total // n
chunk = os.urandom(min(size, 1 << 20))
h = hashlib.sha256()
for i in range(n):
    d = os.path.join(root, f"d{i % 100:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        left = size
        while left:
            piece = chunk[:left]
            f.write(piece)
            left -= len(piece)
os.sync()                            # hand every dirty page to ferry (writeback cache)...
fd = os.open(root, os.O_RDONLY)
os.fsync(fd)                         # ...then one fsync commits the whole volume
os.close(fd)
print(hashlib.sha256(open(os.path.join(root, f"d{(n - 1) % 100:02d}", f"f{n - 1:06d}"), "rb").read()).hexdigest())
"""

SCAN = """
import os, sys, time, hashlib
root, n = sys.argv[1], int(sys.argv[2])
t = time.monotonic()
count = 0
for dirpath, _, files in os.walk(root):
    for name in files:
        os.stat(os.path.join(dirpath, name))
        count += 1
t_stat = time.monotonic() - t
t = time.monotonic()
last = os.path.join(root, f"d{(n - 1) % 100:02d}", f"f{n - 1:06d}")
digest = hashlib.sha256(open(last, "rb").read()).hexdigest()
print(count, round(t_stat, 3), round(time.monotonic() - t, 3), digest)
"""


def ok(reply: dict) -> dict:
    if reply.get("Err"):
        raise RuntimeError(reply["Err"])
    return reply


def planned_move(workdir: Path, total: int, files: int) -> dict:
    workdir.mkdir(parents=True)
    c = Cluster(workdir)
    try:
        a, b = c.add_host("a"), c.add_host("b")
        ok(a.call("Create", Name="vol", Opts={}))
        ok(a.call("Mount", Name="vol", ID="m1"))
        t = time.monotonic()
        digest = a.host.python(FILL, str(a.mountpoint("vol")), str(files), str(total), timeout=3600).strip()
        fill_s = time.monotonic() - t
        t0 = time.monotonic()
        ok(a.call("Unmount", Name="vol", ID="m1"))
        t1 = time.monotonic()
        ok(b.call("Mount", Name="vol", ID="m2"))
        t2 = time.monotonic()
        count, stat_s, read_s, digest_b = b.host.python(SCAN, str(b.mountpoint("vol")), str(files),
                                                        timeout=600).split()
        if digest_b != digest or int(count) != files:
            raise RuntimeError(f"B sees {count} files / digest {digest_b}, A wrote {files} / {digest}")
        ok(b.call("Unmount", Name="vol", ID="m2"))
        return {"fill_s": fill_s, "unmount_a_s": t1 - t0, "move_s": t2 - t0, "mount_b_s": t2 - t1,
                "stat_all_s": float(stat_s), "read_one_s": float(read_s)}
    finally:
        c.destroy()


def failover(workdir: Path, ttl: float, heartbeat: float) -> dict:
    workdir.mkdir(parents=True)
    c = Cluster(workdir, lease_ttl=ttl, heartbeat=heartbeat)
    try:
        a, b = c.add_host("a"), c.add_host("b")
        ok(a.call("Create", Name="vol", Opts={}))
        ok(a.call("Mount", Name="vol", ID="m1"))
        digest = a.host.python(FILL, str(a.mountpoint("vol")), "100", str(10 << 20)).strip()
        time.sleep(heartbeat * 2)                  # a steady state, not a host that just mounted
        t0 = time.monotonic()
        a.host.link_down()
        a.host.kill_all()
        ok(b.call("Mount", Name="vol", ID="m2"))
        t1 = time.monotonic()
        _, _, _, digest_b = b.host.python(SCAN, str(b.mountpoint("vol")), "100").split()
        if digest_b != digest:
            raise RuntimeError("B does not see what A fsynced")
        ok(b.call("Unmount", Name="vol", ID="m2"))
        return {"failover_s": t1 - t0, "ttl": ttl}
    finally:
        c.destroy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100M:1000,1G:10000",
                   help="comma list of SIZE:FILES for the planned move (default 100M:1000,1G:10000)")
    p.add_argument("--ttl", type=float, default=10.0, help="lease TTL for the failover run (default 10, "
                                                           "the production default)")
    p.add_argument("--heartbeat", type=float, default=2.0, help="heartbeat period (default 2)")
    p.add_argument("--no-results", action="store_true", help="do not rewrite bench/HANDOFF.md")
    args = p.parse_args()
    if os.geteuid() != 0:
        p.error("run as root (network namespaces, FUSE)")
    sweep_leftovers()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ferry-handoff-") as tmp:
        for i, item in enumerate(args.sizes.split(",")):
            size_s, files_s = item.split(":")
            total, files = parse_size(size_s), int(files_s)
            r = planned_move(Path(tmp) / f"move{i}", total, files)
            rows.append((size_s, files, r))
            print(f"planned move {size_s} in {files} files: unmount on A {r['unmount_a_s']:.2f} s, "
                  f"Unmount(A) -> Mount(B) {r['move_s']:.2f} s; on B: stat all {r['stat_all_s']:.2f} s, "
                  f"read one {r['read_one_s']:.3f} s (fill took {r['fill_s']:.0f} s)", flush=True)
        f = failover(Path(tmp) / "failover", args.ttl, args.heartbeat)
        print(f"failover: kill -> Mount(B) {f['failover_s']:.2f} s with lease TTL {f['ttl']:g} s", flush=True)
    lines = [
        "# ferry handoff times", "",
        "Written by `bench/handoff.py` (two simulated hosts in network + mount namespaces, real agents,",
        "one moto_server, requests on the agents' plugin sockets as Docker sends them).", "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs, kernel {platform.release()}, python {platform.python_version()}",
        "", "| data | files | Unmount on A | Unmount(A) -> Mount(B) returned | stat every file on B "
            "| read one file on B | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for size_s, files, r in rows:
        mark = "✓" if r["move_s"] < 2 else "✗"
        lines.append(f"| {size_s} | {files:,} | {r['unmount_a_s']:.2f} s | {r['move_s']:.2f} s | "
                     f"{r['stat_all_s']:.2f} s | {r['read_one_s']:.3f} s | {mark} < 2 s |")
    mark = "✓" if f["failover_s"] <= f["ttl"] + 5 else "✗"
    lines += ["", "| failover | lease TTL | kill of A -> Mount(B) returned | target |", "|---|---:|---:|---|",
              f"| host A killed (link down, kill -9 agent and fsd) | {f['ttl']:g} s | {f['failover_s']:.2f} s | "
              f"{mark} ≤ TTL + 5 s |", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_results:
        (ROOT / "bench" / "HANDOFF.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
