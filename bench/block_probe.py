#!/usr/bin/env python3
"""Groundwork for the block layout (issue 10): how many ferry commits one
ext4 fdatasync costs when ext4 lives on a loop device (direct I/O) over a
sparse image file on a ferry mount, for a few ext4 setups.

    python bench/block_probe.py [--store URL] [-n 150]

Each line: fdatasync/s of 4 KiB writes (allocating: each write extends
the file; overwrite: into a preallocated 64 MiB file) and the ferry
commits per fdatasync, read from the daemon's status file. Needs root,
/dev/loop-control, mkfs.ext4. A probe, not a benchmark of record.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers.mount import FerryMount  # noqa: E402

CASES = [  # label, ext4 mount options, mkfs.ext4 arguments, preallocated?, durability
    ("ext4 default (data=ordered), allocating", "", (), False, "remote"),
    ("ext4 default, overwrite preallocated", "", (), True, "remote"),
    ("ext4 data=writeback, allocating", "data=writeback", (), False, "remote"),
    ("ext4 data=writeback,journal_async_commit, allocating", "data=writeback,journal_async_commit", (), False,
     "remote"),
    ("ext4 without a journal, allocating", "", ("-O", "^has_journal"), False, "remote"),
    ("ext4 default, allocating, durability=local", "", (), False, "local"),
]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


def commits(m: FerryMount) -> int:
    return json.loads((m.cache_dir / "status.json").read_text())["commits"]


def probe(work: Path, store: str, label: str, opts: str, mkfs_args: tuple, prealloc: bool, durability: str,
          n: int) -> str:
    m = FerryMount(work / "w")
    ext = work / "ext"
    ext.mkdir(exist_ok=True)
    loop = None
    vol = f"b{random.randrange(1 << 30):x}"
    try:
        m.mkfs(store, vol, options=["history=0"])
        m.mount(store, vol, options=[f"durability={durability}", "commit_interval=30"])
        img = m.mountpoint / "image"
        with open(img, "wb") as f:
            f.truncate(8 << 30)
        loop = sh("losetup", "--direct-io=on", "-f", "--show", str(img)).stdout.strip()
        sh("mkfs.ext4", "-q", *mkfs_args, loop)
        sh("mount", *(["-o", opts] if opts else []), loop, str(ext))
        fd = os.open(ext / "f", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if prealloc:
                os.write(fd, os.urandom(64 << 20))
                os.fsync(fd)
            time.sleep(1.2)                         # the status file is rewritten every second
            c0 = commits(m)
            rnd = random.Random(1)
            t0 = time.monotonic()
            for i in range(n):
                off = rnd.randrange(0, 64 << 20, 4096) if prealloc else i * 65536
                os.pwrite(fd, os.urandom(4096), off)
                os.fdatasync(fd)
            dt = time.monotonic() - t0
            time.sleep(1.2)
            per = (commits(m) - c0) / n
        finally:
            os.close(fd)
        return f"| {label} | {n / dt:.0f} | {per:.2f} |"
    finally:
        sh("umount", str(ext), check=False)
        if loop:
            sh("losetup", "-d", loop, check=False)
        m.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="store URL (default: a file:// store in a temporary directory)")
    ap.add_argument("-n", type=int, default=150, help="fdatasyncs per case")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferry-blockprobe-") as d:
        work = Path(d)
        store = a.store
        if store is None:
            (work / "store").mkdir()
            store = f"file://{work / 'store'}"
        print("| setup | fdatasync/s | ferry commits per fdatasync |")
        print("|---|---:|---:|")
        for case in CASES:
            print(probe(work, store, *case, n=a.n), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
