"""Mount time on a new host and daemon memory against the file count, for
the files layout and the block layout (issue 10: "target: flat in the file
count").

    python bench/block_scale.py [--counts 100000,1000000] [--files-max 100000]

For each count: make a volume on one moto_server, create that many empty
files in it (in 100 directories), unmount, then mount it on a "new host"
(an empty cache dir) and time `ferry fs mount` until the mountpoint answers;
report the daemon's RSS right after the mount and after a `find` has
stat'ed every file. The files layout is measured up to --files-max (its
creation runs at FUSE speed). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FERRY = [sys.executable, "-m", "cli"]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ferry(*args: str, env: dict) -> str:
    r = subprocess.run(FERRY + list(args), capture_output=True, text=True, env=env, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"ferry {' '.join(args)} failed: {r.stdout}{r.stderr}")
    return r.stdout


def daemon_pid(cache: Path) -> int:
    out = subprocess.run(["pgrep", "-f", "--", f"--cache-dir {cache} "], capture_output=True, text=True).stdout.split()
    return int(out[0])


def make_files(root: Path, n: int) -> None:
    per = max(1, n // 100)
    made = 0
    for d in range(100):
        sub = root / f"d{d:02d}"
        sub.mkdir()
        for i in range(min(per, n - made)):
            os.close(os.open(sub / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        made += min(per, n - made)
        if made >= n:
            break


def measure(url: str, work: Path, layout: str, n: int, env: dict) -> dict:
    vol = f"{layout}{n}"
    opts = ["-o", "layout=block", "-o", "size=32G"] if layout == "block" else []
    ferry("fs", "mkfs", "--store", url, *opts, vol, env=env)
    mnt = work / f"mnt-{vol}"
    mnt.mkdir()
    c1 = work / f"cache-{vol}-1"
    ferry("fs", "mount", "--store", url, "--cache-dir", str(c1), vol, str(mnt), env=env)
    t0 = time.monotonic()
    make_files(mnt, n)
    create_s = time.monotonic() - t0
    ferry("fs", "umount", str(mnt), env=env)
    c2 = work / f"cache-{vol}-2"
    t0 = time.monotonic()
    ferry("fs", "mount", "--store", url, "--cache-dir", str(c2), vol, str(mnt), env=env)
    os.stat(mnt)
    mount_s = time.monotonic() - t0
    pid = daemon_pid(c2)
    rss_mounted = rss_mib(pid)
    t0 = time.monotonic()
    count = int(subprocess.run(f"find {mnt} -type f | wc -l", shell=True, capture_output=True,
                               text=True).stdout)
    find_s = time.monotonic() - t0
    rss_after = rss_mib(pid)
    ferry("fs", "umount", str(mnt), env=env)
    assert count == n, (count, n)
    return {"layout": layout, "files": n, "create_s": create_s, "mount_s": mount_s, "rss_mounted": rss_mounted,
            "find_s": find_s, "rss_after_find": rss_after}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="100000,1000000", help="file counts (comma-separated)")
    ap.add_argument("--files-max", type=int, default=100000, help="largest count measured on the files layout")
    args = ap.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    work = Path(tempfile.mkdtemp(prefix="ferry-scale-"))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env = {**os.environ, "FERRY_RUN_DIR": str(work / "run"), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    try:
        time.sleep(2)
        import boto3
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket="scale")
        url = f"s3://scale?endpoint=http://127.0.0.1:{port}&region=us-east-1"
        rows = []
        for n in counts:
            for layout in ("files", "block"):
                if layout == "files" and n > args.files_max:
                    continue
                r = measure(url, work, layout, n, env)
                print(f"{r}", file=sys.stderr, flush=True)
                rows.append(r)
        print("| layout | files | create | mount on a new host | daemon RSS mounted | find (stat all) "
              "| daemon RSS after find |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['layout']} | {r['files']:,} | {r['create_s']:.1f} s | {r['mount_s']:.2f} s | "
                  f"{r['rss_mounted']:.0f} MiB | {r['find_s']:.1f} s | {r['rss_after_find']:.0f} MiB |")
    finally:
        subprocess.run(f"grep ' {work}' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l",
                       shell=True)
        for bf in Path("/sys/block").glob("loop*/loop/backing_file"):
            if bf.read_text().startswith(str(work)):
                subprocess.run(["losetup", "-d", f"/dev/{bf.parent.parent.name}"])
        subprocess.run(["pkill", "-9", "-f", str(work)])
        os.killpg(moto.pid, 9)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
