"""pgbench (TPC-B-like, 8 clients) on ferry volumes beside the local disk
(issue 22: what a database gets from each durability mode and layout).

One moto_server; for each setup a fresh volume, `initdb`, `pgbench -i` at
scale --scale, then `pgbench -c 8 -j 2 -T --seconds` with fsync on and
synchronous_commit on (every COMMIT waits for its WAL fdatasync). Setups:

  local disk           the data directory in a directory of this machine's disk
  ferry files remote   layout=files, durability=remote (each fsync: a segment PUT)
  ferry files local    layout=files, durability=local (each fsync: the local journal)
  ferry block remote   layout=block (ext4), durability=remote
  ferry block local    layout=block (ext4), durability=local

Prints TPS, mean latency and the fdatasyncs ferry saw per transaction
(from the status file), and the ratio to the local disk.

    .venv/bin/python bench/pgbench.py [--seconds 30] [--scale 8] [--only files-local,...]

Needs root, Debian's PostgreSQL 15 (scripts/test.sh installs it) and, for
the block rows, losetup and mkfs.ext4. A benchmark, not a test: it checks
nothing but that pgbench ran.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import _started_moto, make_bucket  # noqa: E402
from tests.helpers.mount import FerryMount  # noqa: E402
from tests.test_postgres_crash import PG_BIN, Postgres, as_postgres  # noqa: E402

CLIENTS = 8
SETUPS = {   # name -> (mkfs options, mount options, kernel fstype) or None for the local disk
    "disk": None,
    "files-remote": ([], ["durability=remote"], "fuse.ferry"),
    "files-local": ([], ["durability=local"], "fuse.ferry"),
    "block-remote": (["layout=block,fs=ext4,size=4G"], ["durability=remote"], "ext4"),
    "block-local": (["layout=block,fs=ext4,size=4G"], ["durability=local"], "ext4"),
}


def counts(m: FerryMount) -> dict[str, int]:
    """fsyncs and commits so far, from the daemon's status file."""
    try:
        st = json.loads((m.cache_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return {"fsyncs": sum(st["metrics"]["fsync_seconds"]["counts"]), "commits": st["commits"]}


def run_pgbench(datadir: Path, sockdir: Path, scale: int, seconds: int,
                counter: Callable[[], dict[str, int]] | None = None) -> dict[str, float]:
    """initdb, load, run; returns tps and mean latency (ms), and with
    `counter` (ferry's counts) the fsyncs and commits of the timed run."""
    shutil.chown(datadir, "postgres", "postgres")
    os.chmod(datadir, 0o700)
    as_postgres(str(PG_BIN / "initdb"), "--no-sync", "-D", str(datadir), "-U", "postgres", "-A", "trust")
    port = 20000 + random.randrange(20000)
    pg = Postgres(datadir, sockdir, port)
    pg.start()
    try:
        pg.sql("CREATE DATABASE bench")
        conn = ["-h", str(sockdir), "-p", str(port)]
        as_postgres(str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale), *conn, "bench", timeout=1800)
        pg.sql("CHECKPOINT", db="bench")
        before = counter() if counter else {}
        r = as_postgres(str(PG_BIN / "pgbench"), "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(seconds),
                        *conn, "bench", timeout=seconds + 600)
        after = counter() if counter else {}
    finally:
        pg.stop()
    out: dict[str, float] = {f"ferry_{k}": after[k] - before[k] for k in before if k in after}
    tps = re.search(r"tps = ([\d.]+)", r.stdout)
    lat = re.search(r"latency average = ([\d.]+) ms", r.stdout)
    if not tps or not lat:
        raise SystemExit(f"pgbench printed no result:\n{r.stdout}{r.stderr}")
    return {**out, "tps": float(tps.group(1)), "latency_ms": float(lat.group(1))}


def bench_setup(name: str, work: Path, endpoint: str, scale: int, seconds: int) -> dict[str, float]:
    sockdir = work / f"sock-{name}"
    sockdir.mkdir()
    shutil.chown(sockdir, "postgres", "postgres")
    setup = SETUPS[name]
    if setup is None:
        datadir = work / "disk" / "pgdata"
        datadir.mkdir(parents=True)
        return run_pgbench(datadir, sockdir, scale, seconds)
    mkfs_opts, mount_opts, fstype = setup
    url = f"s3://{make_bucket(endpoint)}?endpoint={endpoint}&region=us-east-1"
    with FerryMount(work / name, work / f"mnt-{name}") as m:
        m.mkfs(url, "pg", mkfs_opts)
        m.mount(url, "pg", options=mount_opts, fstype=fstype, timeout=300)
        datadir = m.mountpoint / "pgdata"
        datadir.mkdir()
        res = run_pgbench(datadir, sockdir, scale, seconds, lambda: counts(m))
        m.umount(timeout=600)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=30, help="pgbench run time per setup (default 30)")
    ap.add_argument("--scale", type=int, default=8, help="pgbench scale factor (default 8: ~130 MiB)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SETUPS)}")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(SETUPS)
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        ap.error(f"unknown setup(s) {', '.join(unknown)}; choose from {', '.join(SETUPS)}")
    if not (PG_BIN / "pgbench").exists():
        ap.error(f"{PG_BIN / 'pgbench'} is missing: install Debian's postgresql-15 (scripts/test.sh does)")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    work = Path(tempfile.mkdtemp(prefix="ferry-pgbench-"))
    os.chmod(work, 0o755)                 # user postgres traverses it
    srv = _started_moto(work)
    results: dict[str, dict[str, float]] = {}
    try:
        for name in names:
            print(f"{name}: running ({args.seconds} s)...", flush=True)
            results[name] = bench_setup(name, work, srv.endpoint, args.scale, args.seconds)
            print(f"{name}: {results[name]}", flush=True)
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)
    disk = results.get("disk", {}).get("tps")
    print(f"\npgbench TPC-B, {CLIENTS} clients, scale {args.scale}, {args.seconds} s, fsync and "
          f"synchronous_commit on:\n")
    print("| setup | TPS | mean latency (ms) | ferry fsyncs per transaction | ferry commits per transaction "
          "| / local disk |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        tx = r["tps"] * args.seconds
        per_f = f"{r['ferry_fsyncs'] / tx:.2f}" if "ferry_fsyncs" in r and tx else "—"
        per_c = f"{r['ferry_commits'] / tx:.2f}" if "ferry_commits" in r and tx else "—"
        ratio = f"{r['tps'] / disk:.2f}x" if disk else "—"
        print(f"| {name} | {r['tps']:,.0f} | {r['latency_ms']:.1f} | {per_f} | {per_c} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
