"""Does recovering a crashed `durability=local` mount get slower as the
volume ages? (issue 22: the remount after kill -9 on the same cache must
stay within 2x of the first trial's time over 200 trials on one volume.)

One volume, one cache directory, on moto (or --store file). Each trial mounts with
`durability=local`, writes for a random while (4 KiB random writes into a
64 MiB file with fdatasync, and small files created and fsynced), kills the
daemon with -9, and times the remount of the same cache directory until the
mount answers. Every acknowledged write is checked after each remount (so a
slow recovery cannot hide a wrong one; the small files of the trial and
300 older ones picked at random). Prints the time per trial by
quarter, the first trial's, the worst, and their ratio.

    .venv/bin/python bench/recovery_age.py [--trials 200] [--src DIR]

--src runs the ferry code of another checkout (a `git worktree` of an older
commit) with this checkout's virtualenv, for before/after figures.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from localmount import FERRY, bench_env, mount_local  # noqa: E402

from tests.conftest import _started_moto, make_bucket  # noqa: E402

FILE_MB = 64
BS = 4096


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--src", help="run the ferry code of this checkout instead")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--store", choices=("moto", "file"), default="moto",
                    help="moto_server (default; its LIST walks every key of the bucket, so each listing grows "
                         "with the volume's object count) or a file:// store (listings cost what they list)")
    ap.add_argument("--durability", choices=("local", "remote"), default="local",
                    help="the mount's durability mode (remote: the same run, for comparison)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (its fsd.log times each "
                    "mount's phases)")
    args = ap.parse_args()
    work, env = bench_env("ferry-bench-age-", args.src)
    ferry = FERRY
    srv = _started_moto(work) if args.store == "moto" else None
    mnt, cache = work / "mnt", work / "cache"
    mnt.mkdir()
    proc: subprocess.Popen | None = None
    rnd = random.Random(args.seed)
    times: list[float] = []
    try:
        if srv is not None:
            url = f"s3://{make_bucket(srv.endpoint)}?endpoint={srv.endpoint}&region=us-east-1"
        else:
            (work / "store").mkdir()
            url = f"file://{work / 'store'}"
        subprocess.run(ferry + ["fs", "mkfs", "--store", url, "v"], check=True, env=env, cwd=work,
                       stdout=subprocess.DEVNULL)

        def mount() -> tuple[subprocess.Popen, float]:
            t0 = time.monotonic()
            p = mount_local(url, cache, mnt, work, env, args.durability)
            return p, time.monotonic() - t0

        proc, _ = mount()
        big = mnt / "big"
        with open(big, "wb") as f:
            f.truncate(FILE_MB << 20)
            os.fsync(f.fileno())
        model = bytearray(FILE_MB << 20)
        files: dict[str, bytes] = {}
        (mnt / "d").mkdir()
        for trial in range(args.trials):
            fd = os.open(big, os.O_RDWR)
            deadline = time.monotonic() + rnd.uniform(0.2, 2.0)
            n = 0
            while time.monotonic() < deadline:
                if rnd.random() < 0.8:
                    off = rnd.randrange(0, (FILE_MB << 20) // BS) * BS
                    data = rnd.randbytes(BS)
                    os.pwrite(fd, data, off)
                    os.fdatasync(fd)
                    model[off:off + BS] = data
                else:
                    name = f"d/t{trial}-{n}"
                    data = rnd.randbytes(rnd.randrange(1, 9000))
                    (mnt / name).write_bytes(data)
                    with open(mnt / name, "rb+") as f:
                        os.fsync(f.fileno())
                    files[name] = data
                n += 1
            os.close(fd)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, stderr=subprocess.DEVNULL)
            proc, dt = mount()
            times.append(dt)
            got = big.read_bytes()
            if got != bytes(model):
                raise SystemExit(f"trial {trial}: acknowledged writes to the big file are missing")
            # This trial's files, and a sample of older ones (reading all of
            # them each trial would make the run quadratic in its length).
            older = [n for n in files if not n.startswith(f"d/t{trial}-")]
            check = [n for n in files if n.startswith(f"d/t{trial}-")] + rnd.sample(older, min(300, len(older)))
            for name in check:
                data = files[name]
                if (mnt / name).read_bytes() != data:
                    raise SystemExit(f"trial {trial}: {name} differs")
            print(f"trial {trial + 1}/{args.trials}: {n} fsyncs, remount {dt:.2f} s", flush=True)
        q = max(1, len(times) // 4)
        quarters = [times[i:i + q] for i in range(0, len(times), q)][:4]
        print(f"\nremount after kill -9 (durability={args.durability}, same cache, {args.store} store), seconds:")
        for i, part in enumerate(quarters):
            print(f"  quarter {i + 1}: mean {statistics.mean(part):.2f}, max {max(part):.2f}")
        print(f"  first trial {times[0]:.2f}, worst {max(times):.2f} (trial {times.index(max(times)) + 1}), "
              f"worst / first {max(times) / times[0]:.2f}x, last quarter / first quarter "
              f"{statistics.mean(quarters[-1]) / statistics.mean(quarters[0]):.2f}x")
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["fusermount3", "-uz", str(mnt)], check=False, stderr=subprocess.DEVNULL)
        if srv is not None:
            srv.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
