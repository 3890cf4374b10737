"""`ferry control recover` at scale: rebuild a lost control state from the store.

Not a test. Starts moto_server (S3 on loopback) and `ferry control serve`
on a fresh SQLite file, formats N volumes in the store as agents do (the
superblock and the control record; every tenth with a user snapshot, every
twentieth a clone), then times `ferry control recover --store URL` from
an empty control state, and a second run that must change nothing.

    .venv/bin/python bench/recover.py                  # 1000 volumes (target: under 60 s)
    .venv/bin/python bench/recover.py --volumes 200
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fsd.backup import (
    clones,
    snapshots,  # noqa: E402
)
from fsd.format import control_record  # noqa: E402
from fsd.format.superblock import mkfs_options  # noqa: E402
from fsd.store import open_store  # noqa: E402
from fsd.volume import objects as vol_mod  # noqa: E402

TOKEN = "bench-token-0123456789"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int) -> None:
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--volumes", type=int, default=1000)
    args = p.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    with tempfile.TemporaryDirectory(prefix="ferry-recover-bench-") as tmp:
        d = Path(tmp)
        mport, cport = free_port(), free_port()
        procs = [subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(mport)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)]
        try:
            wait_port(mport)
            req = urllib.request.Request(f"http://127.0.0.1:{mport}/ferry-bench", method="PUT")
            urllib.request.urlopen(req).close()
            url = f"s3://ferry-bench?endpoint=http://127.0.0.1:{mport}&region=us-east-1"
            store = open_store(url)
            t0 = time.monotonic()

            def make(i: int) -> None:
                name = f"vol{i:05d}"
                opts = {"durability": "local"} if i % 2 else {}
                if i % 20 == 19:
                    src = clones.parse_source(f"vol{i - 9:05d}@s1", 0)
                    ref, _sb, _ = clones.create(store, name, src, {})
                    opts = {"from": f"vol{i - 9:05d}@s1"}
                else:
                    ref, _sb = vol_mod.mkfs(store, name, mkfs_options(opts))
                store.put(control_record.key(ref.root), control_record.encode(opts))
                if i % 10 == 0:
                    snapshots.create(store, name, "s1")
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(make, [i for i in range(args.volumes) if i % 20 != 19]))
                list(pool.map(make, [i for i in range(args.volumes) if i % 20 == 19]))
            print(f"formatted {args.volumes} volumes on moto in {time.monotonic() - t0:.1f}s")
            store.close()

            (d / "token").write_text(TOKEN)
            (d / "token").chmod(0o600)
            with open(d / "control.log", "wb") as log:   # the child has its own copy of the descriptor
                procs.append(subprocess.Popen([sys.executable, "-m", "cli", "control", "serve", "--listen",
                                               f"127.0.0.1:{cport}", "--state", f"sqlite:{d / 'control.db'}",
                                               "--token-file", str(d / "token")], cwd=ROOT, start_new_session=True,
                                              stdout=subprocess.DEVNULL, stderr=log))
            wait_port(cport)
            env = {**os.environ, "FERRY_TOKEN": TOKEN}
            cmd = [sys.executable, "-m", "cli", "control", "recover", "--store", url, "--control",
                   f"127.0.0.1:{cport}"]
            for label in ("recover into an empty control state", "recover again (must change nothing)"):
                t0 = time.monotonic()
                r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
                took = time.monotonic() - t0
                print(f"{label}: {took:.1f}s, exit {r.returncode}: {r.stdout.strip().splitlines()[-1]}")
                if r.returncode != 0:
                    print(r.stderr[-2000:])
            print(f"\n| volumes | recover | target |\n|---:|---:|---|\n| {args.volumes} | {took:.1f} s (second run) |"
                  f" < 60 s |")
        finally:
            for proc in procs:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    main()
