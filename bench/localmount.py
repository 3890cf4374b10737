"""What bench/local_recovery.py and bench/recovery_age.py share: a work
directory and environment that can run another checkout's ferry code, and
a `durability=local` mount in the foreground, waited for until it answers."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.mount import FSTYPE, is_mounted  # noqa: E402

FERRY = [sys.executable, "-m", "cli"]


def bench_env(prefix: str, src: str | None) -> tuple[Path, dict[str, str]]:
    """A fresh work directory, and the environment for ferry commands (with
    `src`: that checkout's code on the path)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = {**os.environ, "FERRY_RUN_DIR": str(work / "run")}
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    return work, env


def mount_local(url: str, cache: Path, mnt: Path, work: Path, env: dict[str, str],
                durability: str = "local") -> subprocess.Popen:
    """`ferry fs mount -o durability=local` (or `durability`) in the foreground
    (its own session, log in WORK/fsd.log); returns once the mount answers."""
    with open(work / "fsd.log", "ab") as log:   # the child has its own copy of the descriptor
        p = subprocess.Popen(FERRY + ["fs", "mount", "--store", url, "--cache-dir", str(cache), "v", str(mnt),
                                      "--foreground", "-o", f"durability={durability}"],
                             stdout=log, stderr=log, env=env, cwd=work, start_new_session=True)
    while not is_mounted(mnt, FSTYPE):
        if p.poll() is not None:
            raise SystemExit(f"mount failed; see {work / 'fsd.log'}")
        time.sleep(0.005)
    return p
