#!/usr/bin/env python3
"""Figures for volumes that live long (issue 8): store growth under churn,
the fsync rate while GC runs, mount time after many commits, takeover time
against the dead owner's journal length. One moto_server, real mounts.

  churn       a 32 MiB file rewritten at random 256 KiB ranges with fsync
              (a database rewriting its pages), with the owner's GC and
              with gc=off: store data bytes against live data bytes.
              Target <= 1.2x with GC.
  fdatasync   4 KiB pwrite + fdatasync at random offsets of a 64 MiB file,
              the same seconds with GC every second and with gc=off.
              Target >= 90 % of the rate without GC.
  mount       takeover mount (fresh cache, after kill -9) of a volume after
              N fsynced commits, against a fresh volume holding the same
              files. Target <= 2x.
  takeover    takeover mount of a volume whose dead owner left 2k / 20k /
              100k segments in its epoch (written directly, with a snapshot
              every 512 segments as the owner writes them). Target < 3 s.

    python bench/lifecycle.py [--commits 20000] [--segments 2000,20000,100000]
                              [--runtime 20] [--quick]

Writes bench/LIFECYCLE.md. A benchmark: it asserts only that data reads back.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fsd.format import keys  # noqa: E402
from fsd.format.segment import Segment  # noqa: E402
from fsd.gc.run import read_report  # noqa: E402
from fsd.store import open_store  # noqa: E402
from fsd.volume import objects as vol_mod  # noqa: E402
from tests.conftest import _started_moto, make_bucket  # noqa: E402
from tests.helpers.mount import FerryMount, fsync_dir  # noqa: E402

MiB = 1 << 20
OUT = ROOT / "bench" / "LIFECYCLE.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def usage(store_url: str, vol: str) -> dict[str, int]:
    store = open_store(store_url)
    try:
        root = vol_mod.locate(store, vol)[0].root
        data = list(store.list_info(keys.data_prefix(root)))
        report = read_report(store, root) or {}
        return {"data_bytes": sum(o.size for o in data), "data_objects": len(data),
                "segments": sum(1 for _ in store.list(keys.journal_prefix(root))),
                "live_bytes": report.get("live_bytes", 0), "report_started": report.get("started_ns", 0)}
    finally:
        store.close()


def wait_pass(store_url: str, vol: str, after_ns: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while usage(store_url, vol)["report_started"] <= after_ns:
        if time.monotonic() > deadline:
            raise RuntimeError("no GC pass reported")
        time.sleep(0.5)


# ------------------------------------------------------------------ churn
def churn(work: Path, store_url: str, gc: bool, rounds: int) -> dict:
    vol = f"churn-{'gc' if gc else 'nogc'}"
    m = FerryMount(work / vol)
    with m:
        m.mkfs(store_url, vol, options=["history=0"])
        opts = ["gc_interval=2s", "gc_grace=0"] if gc else ["gc=off"]
        m.mount(store_url, vol, options=opts)
        size = 32 * MiB
        path = m.mountpoint / "db"
        with open(path, "wb") as f:
            f.write(os.urandom(size))
            f.flush()
            os.fsync(f.fileno())
        rnd = random.Random(1)
        t0 = time.monotonic()
        fd = os.open(path, os.O_WRONLY)
        try:
            for _ in range(rounds):
                os.pwrite(fd, os.urandom(256 << 10), rnd.randrange(size // (256 << 10)) * (256 << 10))
                os.fsync(fd)
        finally:
            os.close(fd)
        elapsed = time.monotonic() - t0
        mark = time.time_ns()
        if gc:
            wait_pass(store_url, vol, mark)
        u = usage(store_url, vol)
        m.umount()
    written = size + rounds * (256 << 10)
    return {"gc": gc, "rounds": rounds, "seconds": elapsed, "written": written, **u}


# -------------------------------------------------------------- fdatasync
GC_SYNC_OPTS = ["gc_interval=1s", "gc_grace=0", "snapshot_every=64"]


def fdatasync_rate(work: Path, store_url: str, gc: bool, runtime: float, run: int) -> dict:
    vol = f"sync-{'gc' if gc else 'nogc'}-{run}"
    m = FerryMount(work / vol)
    with m:
        m.mkfs(store_url, vol, options=["history=0"])
        m.mount(store_url, vol, options=GC_SYNC_OPTS if gc else ["gc=off", "snapshot_every=64"])
        path = m.mountpoint / "f"
        with open(path, "wb") as f:
            f.truncate(64 * MiB)
            os.fsync(f.fileno())
        rnd = random.Random(2)
        buf = os.urandom(4096)
        n = 0
        fd = os.open(path, os.O_WRONLY)
        try:
            end = time.monotonic() + runtime
            while time.monotonic() < end:
                os.pwrite(fd, buf, rnd.randrange(64 * MiB // 4096) * 4096)
                os.fdatasync(fd)
                n += 1
        finally:
            os.close(fd)
        passes = m.log().count("GC freed")
        m.umount()
    return {"gc": gc, "iops": n / runtime, "gc_passes_that_freed": passes}


# ------------------------------------------------------------------ mount
def timed_takeover(work: Path, store_url: str, vol: str, name: str) -> float:
    m = FerryMount(work / name)
    with m:
        t0 = time.monotonic()
        m.mount(store_url, vol, takeover=True)
        took = time.monotonic() - t0
        os.listdir(m.mountpoint)
        m.umount()
    return took


def fill_files(mp: Path, n: int) -> None:
    for i in range(n):
        (mp / f"f{i:04d}").write_bytes(b"x" * 3000)
    os.sync()
    fsync_dir(mp)


def mount_after_commits(work: Path, store_url: str, commits: int) -> dict:
    fresh = "fresh"
    m = FerryMount(work / "fresh-owner")
    with m:
        m.mkfs(store_url, fresh)
        m.mount(store_url, fresh)
        fill_files(m.mountpoint, 200)
        m.kill9()
    fresh_s = min(timed_takeover(work, store_url, fresh, f"fresh-{i}") for i in range(3))
    old = "old"
    m = FerryMount(work / "old-owner")
    with m:
        m.mkfs(store_url, old)
        m.mount(store_url, old, options=["gc_interval=10s", "gc_grace=0"])
        fill_files(m.mountpoint, 200)
        t0 = time.monotonic()
        fd = os.open(m.mountpoint / "f0000", os.O_WRONLY)
        try:
            for i in range(commits):
                os.pwrite(fd, i.to_bytes(8, "little"), 0)
                os.fsync(fd)
                if i % 5000 == 4999:
                    log(f"  {i + 1} commits ({(i + 1) / (time.monotonic() - t0):.0f}/s)")
        finally:
            os.close(fd)
        m.kill9()
    segments = usage(store_url, old)["segments"]
    old_s = min(timed_takeover(work, store_url, old, f"old-{i}") for i in range(3))
    return {"commits": commits, "fresh_s": fresh_s, "old_s": old_s, "segments_left": segments}


# --------------------------------------------------------------- takeover
def synthetic_owner(store_url: str, vol: str, segments: int) -> None:
    """A dead owner's epoch of `segments` segments, as the owner leaves it with
    gc=off: a snapshot every 512 segments, no seal."""
    store = open_store(store_url)
    try:
        ref, sb = vol_mod.mkfs(store, vol, {})
        epoch, _ = vol_mod.claim_epoch(store, ref.root, cache_tokens=(), takeover=False)
        state = vol_mod.load_state(store, ref.root, sb).state

        def put(seq: int) -> None:
            seg = Segment(kind="segment", epoch=epoch, seq=seq, created_ns=time.time_ns(), records=[],
                          reason=None, sealed_by=None, batch=seq)
            store.put(keys.journal_key(ref.root, epoch, seq), seg.encode(), if_none_match=True)
            if seq % 512 == 0:
                vol_mod.write_snapshot(store, ref.root, epoch, seq, state)
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(put, range(2, segments + 2)))
    finally:
        store.close()


def takeover_vs_segments(work: Path, store_url: str, counts: list[int]) -> list[dict]:
    out = []
    for n in counts:
        vol = f"seg{n}"
        t0 = time.monotonic()
        synthetic_owner(store_url, vol, n)
        log(f"  {n} segments written in {time.monotonic() - t0:.0f} s")
        took = timed_takeover(work, store_url, vol, f"take-{n}")
        again = timed_takeover(work, store_url, vol, f"take2-{n}")
        out.append({"segments": n, "takeover_s": took, "second_takeover_s": again})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=20000)
    ap.add_argument("--segments", default="2000,20000,100000")
    ap.add_argument("--runtime", type=float, default=20.0)
    ap.add_argument("--churn-rounds", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="2,000 commits, 2k/20k segments, 8 s runs")
    ap.add_argument("--no-results", action="store_true")
    ap.add_argument("--only", default="churn,fdatasync,mount,takeover", help="a subset of the parts")
    ap.add_argument("--gc-sync-opts", default=",".join(GC_SYNC_OPTS),
                    help="mount options of the fdatasync run with GC (default: %(default)s)")
    a = ap.parse_args()
    GC_SYNC_OPTS[:] = a.gc_sync_opts.split(",")
    parts = set(a.only.split(","))
    if a.quick:
        a.commits, a.segments, a.runtime, a.churn_rounds = 2000, "2000,20000", 8.0, 150
    work = Path(tempfile.mkdtemp(prefix="ferry-lifecycle-"))
    moto = _started_moto(work)
    try:
        url = f"s3://{make_bucket(moto.endpoint)}?endpoint={moto.endpoint}&region=us-east-1"
        churns, syncs, mounts, takes = [], [], {}, []
        if "churn" in parts:
            log("churn with GC / without")
            churns = [churn(work, url, gc, a.churn_rounds) for gc in (True, False)]
        if "fdatasync" in parts:
            log("fdatasync with GC / without")
            syncs = [fdatasync_rate(work, url, gc, a.runtime, i) for i, gc in enumerate((False, True, False, True))]
        if "mount" in parts:
            log(f"mount after {a.commits} commits")
            mounts = mount_after_commits(work, url, a.commits)
        if "takeover" in parts:
            log("takeover against the dead owner's segments")
            takes = takeover_vs_segments(work, url, [int(x) for x in a.segments.split(",")])
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"# Lifecycle figures ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
             f"{os.cpu_count()} cores, {platform.node()}, one moto_server)", "",
             "`python bench/lifecycle.py` (issue 8). Ratios are within this run.", "",
             "| churn: 32 MiB file, random 256 KiB rewrites + fsync | rounds | written | store data | live data "
             "| store/live | segments left |", "|---|---:|---:|---:|---:|---:|---:|"]
    live = (churns[0]["live_bytes"] if churns else 0) or 32 * MiB
    for c in churns:
        label = "owner GC every 2 s" if c["gc"] else "gc=off"
        lines.append(f"| {label} | {c['rounds']} | {c['written'] / MiB:.0f} MiB "
                     f"| {c['data_bytes'] / MiB:.1f} MiB | {live / MiB:.1f} MiB | {c['data_bytes'] / live:.2f}x "
                     f"| {c['segments']} |")
    if syncs:
        nogc = [s["iops"] for s in syncs if not s["gc"]]
        withgc = [s["iops"] for s in syncs if s["gc"]]
        ratio = (sum(withgc) / len(withgc)) / (sum(nogc) / len(nogc))
        lines += ["", "| 4 KiB pwrite + fdatasync, 64 MiB file | IOPS (two runs each, interleaved) |", "|---|---|",
                  f"| gc=off | {', '.join(f'{x:.0f}' for x in nogc)} |",
                  f"| owner GC: {' '.join(GC_SYNC_OPTS)} | {', '.join(f'{x:.0f}' for x in withgc)} "
                  f"({sum(s['gc_passes_that_freed'] for s in syncs)} passes freed objects) |",
                  f"| with GC / without | {ratio:.0%} |"]
    if mounts:
        lines += ["", "| mount on a new host (takeover after kill -9), 200 files | seconds (best of 3) |",
                  "|---|---:|", f"| fresh volume | {mounts['fresh_s']:.2f} |",
                  f"| after {mounts['commits']} fsynced commits (owner GC on; {mounts['segments_left']} journal "
                  f"keys left) | {mounts['old_s']:.2f} ({mounts['old_s'] / mounts['fresh_s']:.2f}x) |"]
    if takes:
        lines += ["", "| takeover: dead owner's epoch, gc=off (snapshot every 512) | first takeover | second |",
                  "|---|---:|---:|"]
    for t in takes:
        lines.append(f"| {t['segments']:,} segments | {t['takeover_s']:.2f} s | {t['second_takeover_s']:.2f} s |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_results:
        OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
