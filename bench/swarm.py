#!/usr/bin/env python3
"""How long a Swarm service's task is stopped when its node is drained, on
a `local` volume (Swarm's own cost: data does not move) and on ferry volumes
(files and block), in one run; and after the loss of a whole node.

One command, as root, on one machine: moto_server and the control service
on a test bridge, simulated hosts (network + mount namespaces, each with its
own dockerd and ferry agent) joined into a Swarm, exactly as
tests/cluster/test_swarm.py builds them. The service runs an fsync loop
(`dd conv=fsync` of one line every 50 ms); the figure is the time from the
old task's last acknowledged line to the new task's first, seen by polling
the acknowledgement file every 20 ms.

    python bench/swarm.py                 # 2 rounds of each drain, 1 node loss
    python bench/swarm.py --rounds 3 --no-loss
    python bench/swarm.py --fill 1g       # ferry volumes holding 1 GiB (or --fill 100k files)
    python bench/swarm.py --rounds 0 --defaults   # node loss with Swarm's and ferry's defaults

Issue 23's target: ferry's share of a drain (ferry's gap minus the local
volume's, same run) under 2 s. A benchmark, not a test: it asserts only
that every acknowledged line is in the moved volume.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from control.leases import DEFAULT_HEARTBEAT, DEFAULT_TTL  # noqa: E402
from tests.cluster import dockerd as dk  # noqa: E402
from tests.cluster.conftest import Cluster  # noqa: E402
from tests.cluster.netns import sweep_leftovers  # noqa: E402
from tests.cluster.swarm import AckLog, Swarm, check_moved, start_fsync_service  # noqa: E402

KINDS = {
    "local": "type=volume,source={vol},target=/data",
    "ferry files": "type=volume,source={vol},target=/data,volume-driver=ferry",
    "ferry block": ("type=volume,source={vol},target=/data,volume-driver=ferry,volume-opt=layout=block,"
                    "volume-opt=fs=ext4,volume-opt=size=256M"),
}


# What a ferry volume holds before its service starts (--fill): written by a
# one-off container whose exit unmounts the volume, so it is all committed.
FILLS = {
    "1g": "dd if=/dev/urandom of=/data/big bs=1048576 count=1024 conv=fsync 2>/dev/null",
    "100k": "i=0; while [ $i -lt 100000 ]; do echo $i > /data/f$i; i=$((i+1)); done; sync",
}
CREATE_OPTS = {"ferry files": [], "ferry block": ["-o", "layout=block", "-o", "fs=ext4", "-o", "size=2G"]}


def fill(swarm: Swarm, kind: str, vol: str, what: str) -> float:
    """Create `vol` on node b and fill it; the seconds the fill took."""
    d = swarm.nodes["b"]
    d.docker("volume", "create", "-d", "ferry", *CREATE_OPTS[kind], vol)
    t0 = time.monotonic()
    d.docker("run", "--rm", "--network", "none", "-v", f"{vol}:/data", dk.IMAGE, "sh", "-c", FILLS[what],
             timeout=3600)
    return time.monotonic() - t0


def task_created(swarm: Swarm, task_id: str) -> float:
    """When the manager created a task (epoch seconds)."""
    stamp = swarm.manager.docker("inspect", "--format", "{{.CreatedAt}}", task_id).stdout.strip()
    # Go's default form (2026-12-07 23:41:44.123456789 +0000 UTC) or RFC 3339 (...T23:41:44.123Z)
    day, clock = stamp.replace("T", " ").rstrip("Z").split()[:2]
    whole, _, frac = clock.partition(".")
    dt = datetime.datetime.fromisoformat(f"{day}T{whole}+00:00")
    return dt.timestamp() + float(f"0.{frac or 0}")


def move(swarm: Swarm, kind: str, n: int, work: Path, *, lose_node: bool, fill_with: str | None = None) -> float:
    """Start the service, let it acknowledge 20 lines, drain (or kill) its
    node, return the gap; the service is removed and the node made active again."""
    acks = AckLog(work / f"acks-{n}")
    name = f"s{n}"
    if fill_with and kind != "local":       # (a local volume's data does not move: nothing to fill)
        took = fill(swarm, kind, f"v{n}", fill_with)
        print(f"{kind}: filled v{n} with {fill_with} in {took:.0f} s", flush=True)
    old = start_fsync_service(swarm, name, KINDS[kind].format(vol=f"v{n}"), acks, "--stop-grace-period", "5s")
    killed_at = time.time()
    if lose_node:
        swarm.kill_node(old)
    else:
        swarm.manager.docker("node", "update", "--availability", "drain", swarm.ids[old])
    gap = acks.handover(swarm=swarm)
    if lose_node:
        written_at = time.time()
        created = max(task_created(swarm, t) for t in
                      swarm.manager.docker("service", "ps", "-q", "--no-trunc", name).stdout.split())
        print(f"node loss: Swarm created the replacement task {created - killed_at:.2f} s after the kill "
              f"(its detection); its first write came {written_at - created:.2f} s later (scheduling, "
              f"ferry's wait for the dead node's lease to expire, the mount, the container's start)",
              flush=True)
    if kind != "local":         # (a local volume's data does not move)
        check_moved(swarm, name, acks, lines=5)
    swarm.manager.docker("service", "rm", name)
    if not lose_node:
        swarm.manager.docker("node", "update", "--availability", "active", swarm.ids[old])
    return gap


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="drains of each kind, interleaved (default 2)")
    ap.add_argument("--no-loss", action="store_true", help="skip the node-loss run")
    ap.add_argument("--defaults", action="store_true",
                    help="Swarm's default dispatcher heartbeat (5 s) and ferry's default lease TTL and heartbeat "
                         f"({DEFAULT_TTL:g} s, {DEFAULT_HEARTBEAT:g} s) instead of the tests' short ones")
    ap.add_argument("--fill", choices=sorted(FILLS),
                    help="fill each ferry volume before its service starts: 1 GiB in one file, or 100,000 files")
    args = ap.parse_args()
    if why := dk.available():
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    sweep_leftovers()
    gaps: dict[str, list[float]] = {k: [] for k in KINDS}
    loss: float | None = None
    with tempfile.TemporaryDirectory(prefix="ferry-swarm-bench-") as tmp:
        work = Path(tmp)
        if args.defaults:
            cluster = Cluster(work, lease_ttl=DEFAULT_TTL, heartbeat=DEFAULT_HEARTBEAT)
            swarm = Swarm(cluster, dispatcher_heartbeat=None)
        else:
            cluster = Cluster(work)
            swarm = Swarm(cluster)
        try:
            for name in ("a", "b", "c"):
                swarm.add(name)
            # The manager takes no tasks: a drain always moves the task between b and c.
            swarm.manager.docker("node", "update", "--availability", "drain", swarm.ids["a"])
            n = 0
            for r in range(args.rounds):
                for kind in KINDS:
                    n += 1
                    gaps[kind].append(move(swarm, kind, n, work, lose_node=False, fill_with=args.fill))
                    print(f"round {r + 1}, {kind}: drain gap {gaps[kind][-1]:.2f} s", flush=True)
            if not args.no_loss:
                loss = move(swarm, "ferry files", n + 1, work, lose_node=True, fill_with=args.fill)
                print(f"ferry files: node loss gap {loss:.2f} s (lease TTL {cluster.lease_ttl:g} s)", flush=True)
        finally:
            swarm.leave_all()
            cluster.destroy()
    if gaps["local"]:
        base = statistics.median(gaps["local"])
        print(f"\nferry volumes filled with: {args.fill or 'nothing'}")
        print("\n| volume | drain gaps (s) | median | ferry's share (median - local) |")
        print("|---|---|---:|---:|")
        for kind, g in gaps.items():
            med = statistics.median(g)
            share = "—" if kind == "local" else f"{med - base:.2f}"
            print(f"| {kind} | {', '.join(f'{x:.2f}' for x in g)} | {med:.2f} | {share} |")
    if loss is not None:
        print(f"\nnode loss (kill -9 of the task's node), ferry files: {loss:.2f} s; Swarm's dispatcher "
              f"heartbeat {swarm.dispatcher_heartbeat or 'default (5s)'}, ferry's lease TTL {cluster.lease_ttl:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
