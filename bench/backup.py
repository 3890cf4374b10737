#!/usr/bin/env python3
"""Backup and restore figures (issue 9), one moto_server, one run:

- snapshot time of a mounted volume, clone time (from a snapshot, and of
  the volume as last committed), for N files and S bytes;
- export throughput (`ferry fs export` of a snapshot to a local file) against
  the store's GET ceiling (16 parallel GETs of the same data objects), `tar
  -cf` of the same tree on a ferry mount with a cold cache, and `tar -cf` of
  the same tree on the local disk;
- import throughput (`ferry fs import` of that tar) against the PUT ceiling
  (16 parallel PUTs of as many 1 MiB objects), `tar -xf` onto a ferry mount
  (until unmounted: everything committed), and `tar -xf` on the local disk
  (until synced).

    python bench/backup.py [--files 10000] [--size 1G] [--skip-tar]

Prints a markdown table; a benchmark, it asserts only that commands succeed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsd.format import keys  # noqa: E402
from fsd.options import parse_size  # noqa: E402
from fsd.store import open_store  # noqa: E402
from fsd.volume import objects as vol_mod  # noqa: E402
from tests.conftest import _started_moto, make_bucket  # noqa: E402
from tests.helpers.mount import FerryMount, run_ferry  # noqa: E402


def ok(*args: str, env: dict | None = None) -> float:
    t0 = time.monotonic()
    r = run_ferry(*args, env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"ferry {' '.join(args)}: {r.stderr}")
    return time.monotonic() - t0


def fill(root: Path, files: int, total: int) -> None:
    chunk = os.urandom(min(max(total // files, 1), 1 << 20))
    per = total // files
    for i in range(files):
        d = root / f"d{i % 100:02d}"
        d.mkdir(exist_ok=True)
        with open(d / f"f{i:06d}", "wb") as f:
            left = per
            while left:
                # a different first 8 bytes per file: no de-duplication across files
                part = (i.to_bytes(8, "little") + chunk[8:])[:left] if left == per else chunk[:left]
                f.write(part)
                left -= len(part)


def sh(cmd: list[str], cwd: Path | None = None) -> float:
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, cwd=cwd, capture_output=True)
    return time.monotonic() - t0


def ceiling(url: str, root: str) -> tuple[float, float]:
    """(GET, PUT) MB/s of the volume's own data objects (same count, same
    sizes), 16 requests in parallel: what the store gives an ideal client."""
    store = open_store(url)
    try:
        objs = [o for o in store.list_info(keys.data_prefix(root))]
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            blobs = list(pool.map(lambda o: store.get(o.key), objs))
        nbytes = sum(len(b) for b in blobs)
        get = nbytes / 1e6 / (time.monotonic() - t0)
        t0 = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda ib: store.put(f"bench-ceiling/{ib[0]:08d}", ib[1]), enumerate(blobs)))
        put = nbytes / 1e6 / (time.monotonic() - t0)
        store.delete_many([f"bench-ceiling/{i:08d}" for i in range(len(blobs))])
        return get, put
    finally:
        store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--skip-tar", action="store_true", help="skip the tar-on-a-mount comparisons")
    a = ap.parse_args()
    total = parse_size(a.size)
    work = Path(tempfile.mkdtemp(prefix="ferry-backupbench-"))
    moto = _started_moto(work)
    rows: list[tuple[str, str, str]] = []
    try:
        url = f"s3://{make_bucket(moto.endpoint)}?endpoint={moto.endpoint}&region=us-east-1"
        m = FerryMount(work / "v")
        with m:
            m.mkfs(url, "v")
            m.mount(url, "v")
            t0 = time.monotonic()
            fill(m.mountpoint, a.files, total)
            os.sync()
            fd = os.open(m.mountpoint, os.O_RDONLY)
            os.fsync(fd)                       # committed: the snapshots below time metadata only
            os.close(fd)
            print(f"filled {a.files} files, {total / 2**20:.0f} MiB in {time.monotonic() - t0:.1f} s",
                  file=sys.stderr)
            env = {"FERRY_RUN_DIR": str(m.run_dir)}
            for name in ("s1", "s2"):
                rows.append((f"snapshot of the mounted volume ({name})",
                             f"{ok('fs', 'snapshot', 'create', '--store', url, 'v', name, env=env):.2f} s", "< 1 s"))
            rows.append(("clone from a snapshot (`--from v@s1`)",
                         f"{ok('fs', 'mkfs', '--store', url, 'c1', '--from', 'v@s1'):.2f} s", "metadata time"))
            rows.append(("clone as last committed (`--from v`)",
                         f"{ok('fs', 'mkfs', '--store', url, 'c2', '--from', 'v'):.2f} s", "metadata time"))
            m.umount()
        tar = work / "v.tar"
        t = ok("fs", "export", "--store", url, "v@s1", "-o", str(tar))
        store = open_store(url)
        try:
            root = vol_mod.locate(store, "v")[0].root
        finally:
            store.close()
        get, put = ceiling(url, root)
        mb = total / 1e6
        rows.append(("export `ferry fs export v@s1 -o FILE`", f"{mb / t:.0f} MB/s",
                     f"{mb / t / get:.0%} of the GET ceiling ({get:.0f} MB/s)"))
        t = ok("fs", "import", "--store", url, "imp", str(tar))
        rows.append(("import `ferry fs import NEW FILE`", f"{mb / t:.0f} MB/s",
                     f"{mb / t / put:.0%} of the PUT ceiling ({put:.0f} MB/s)"))
        local = work / "local"
        local.mkdir()
        fill(local, a.files, total)
        os.sync()
        t = sh(["tar", "-cf", str(work / "local.tar"), "-C", str(local), "."])
        rows.append(("`tar -cf` of the same tree on the local disk", f"{mb / t:.0f} MB/s", "reference"))
        x = work / "x"
        x.mkdir()
        t0 = time.monotonic()
        subprocess.run(["tar", "-xf", str(tar), "-C", str(x)], check=True)
        os.sync()
        rows.append(("`tar -xf` onto the local disk (+ sync)", f"{mb / (time.monotonic() - t0):.0f} MB/s",
                     "reference"))
        if not a.skip_tar:
            cold = FerryMount(work / "cold")
            with cold:
                cold.mount(url, "v")              # a fresh cache: every block comes from the store
                t = sh(["tar", "-cf", str(work / "mnt.tar"), "-C", str(cold.mountpoint), "."])
                rows.append(("`tar -cf` on a ferry mount, cold cache", f"{mb / t:.0f} MB/s", "the peer way"))
                cold.umount()
            dst = FerryMount(work / "dst")
            with dst:
                dst.mkfs(url, "untar")
                dst.mount(url, "untar")
                t0 = time.monotonic()
                subprocess.run(["tar", "-xf", str(tar), "-C", str(dst.mountpoint)], check=True)
                dst.umount()
                rows.append(("`tar -xf` onto a ferry mount (until unmounted)",
                             f"{mb / (time.monotonic() - t0):.0f} MB/s", "the peer way"))
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{a.files:,} files, {total / 2**20:.0f} MiB, one moto_server on loopback, {os.cpu_count()} CPUs\n")
    print("| operation | result | compared with |")
    print("|---|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
