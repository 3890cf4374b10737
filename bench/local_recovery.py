"""How long a remount takes to recover N batches that a crashed
`durability=local` mount had acknowledged but not uploaded (issue 7: target
< 2 s for 2,000 batches).

The store sits behind a TCP proxy that is cut while a writer creates N
files of 4 KiB, each followed by fdatasync (each acknowledged from the local
journal, none uploaded); then kill -9 of the daemon, the proxy restored, and
a remount of the same cache dir is timed until the mount answers. Every
file is then compared with what was acknowledged.

(Small files, not 4 KiB rewrites of one large file: an in-flight batch holds
a copy of each block it touched, and un-uploaded bytes count against
`dirty_limit`, so with 1 MiB blocks a cut store stops such a writer after
about dirty_limit / 1 MiB batches, by design.)

    .venv/bin/python bench/local_recovery.py [--batches 2000] [--src DIR]

--src runs the ferry code of another checkout (e.g. a `git worktree` of an
older commit) with this checkout's virtualenv, for before/after figures.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localmount import FERRY, bench_env, mount_local  # noqa: E402

from tests.conftest import _started_moto, make_bucket  # noqa: E402
from tests.helpers.tcpproxy import TcpProxy  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=2000)
    ap.add_argument("--src", help="run the ferry code of this checkout instead")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (daemon log) and print its path")
    args = ap.parse_args()
    work, env = bench_env("ferry-bench-recovery-", args.src)
    ferry = FERRY
    srv = _started_moto(work)
    proxy = TcpProxy("127.0.0.1", srv.port)
    mnt, cache = work / "mnt", work / "cache"
    mnt.mkdir()
    proc = None
    try:
        url = f"s3://{make_bucket(srv.endpoint)}?endpoint={proxy.endpoint}&region=us-east-1"
        subprocess.run(ferry + ["fs", "mkfs", "--store", url, "v"], check=True, env=env, cwd=work)

        def mount() -> subprocess.Popen:
            return mount_local(url, cache, mnt, work, env)

        proc = mount()
        proxy.cut()
        rnd = random.Random(1)
        model: dict[str, bytes] = {}
        (mnt / "d").mkdir()
        t0 = time.monotonic()
        for i in range(args.batches):
            name = f"d/f{i:05d}"
            data = rnd.randbytes(4096)
            fd = os.open(mnt / name, os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, data)
            os.fdatasync(fd)
            os.close(fd)
            model[name] = data
        wrote = time.monotonic() - t0
        os.killpg(proc.pid, 9)
        proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proxy.restore()
        t0 = time.monotonic()
        proc = mount()
        took = time.monotonic() - t0
        ok = all((mnt / name).read_bytes() == data for name, data in model.items())
        print(f"{args.batches} acknowledged 4 KiB files ({args.batches / wrote:.0f}/s, store cut); "
              f"remount with local recovery: {took:.2f} s; every acknowledged byte back: {ok}")
        subprocess.run(ferry + ["fs", "umount", str(mnt)], env=env, capture_output=True)
        proc.wait(timeout=120)
        return 0 if ok else 1
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        proxy.close()
        srv.stop()
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
