#!/usr/bin/env python3
"""Snapshot time (issue 9): `ferry fs snapshot create` of a mounted volume
holding N files and S bytes, against one moto_server. Target < 1 s for
1 GiB in 10,000 files (metadata only: the data is shared, not copied).

    python bench/snapshots.py [--files 10000] [--size 1G]

Prints a table; a benchmark, it asserts only that the command succeeds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsd.options import parse_size  # noqa: E402
from tests.conftest import _started_moto, make_bucket  # noqa: E402
from tests.helpers.mount import FerryMount, run_ferry  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--size", default="1G")
    a = ap.parse_args()
    total = parse_size(a.size)
    work = Path(tempfile.mkdtemp(prefix="ferry-snapbench-"))
    moto = _started_moto(work)
    try:
        url = f"s3://{make_bucket(moto.endpoint)}?endpoint={moto.endpoint}&region=us-east-1"
        m = FerryMount(work / "v")
        with m:
            m.mkfs(url, "v")
            m.mount(url, "v")
            chunk = os.urandom(min(total // a.files, 1 << 20))
            t0 = time.monotonic()
            for i in range(a.files):
                d = m.mountpoint / f"d{i % 100:02d}"
                d.mkdir(exist_ok=True)
                with open(d / f"f{i:06d}", "wb") as f:
                    left = total // a.files
                    while left:
                        f.write(chunk[:left])
                        left -= min(left, len(chunk))
            os.sync()
            fd = os.open(m.mountpoint, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            print(f"filled {a.files} files, {total / 2**20:.0f} MiB in {time.monotonic() - t0:.1f} s",
                  file=sys.stderr)
            rows = []
            for name in ("s1", "s2", "s3"):
                t0 = time.monotonic()
                r = run_ferry("fs", "snapshot", "create", "--store", url, "v", name,
                              env={"FERRY_RUN_DIR": str(m.run_dir)})
                took = time.monotonic() - t0
                if r.returncode != 0:
                    raise SystemExit(r.stderr)
                rows.append((name, took))
            m.umount()
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"| snapshot of a mounted volume, {a.files:,} files, {total / 2**20:.0f} MiB | seconds (CLI start to end) |")
    print("|---|---:|")
    for name, took in rows:
        print(f"| {name} | {took:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
