"""scripts/quickstart.sh, run as a user would, in a sandbox of its own.

The sandbox is a fresh mount, network and PID namespace (unshare): its own
loopback (the quickstart's fixed ports are free), a private tmpfs on
/run/docker/plugins (where Docker finds the agent), its own dockerd
(Debian's docker.io on vfs, no bridge, no iptables), and every path the
quickstart writes under FERRY_QS_ROOT in the test's tmp dir. When the
sandbox's first process exits, the kernel kills everything left in it and
its mounts go with its mount namespace, so nothing outlives the test even
when it fails.

What must hold: the first run ends with the second container reading what
the first wrote and `ferry status` showing the volume; a second run says
what already runs and does the demo again; `--down` leaves no ferry process
and no ferry mount behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (os.path.exists("/usr/sbin/dockerd") and os.path.exists("/usr/bin/docker") and shutil.which("unshare")),
    reason="needs Debian's docker.io and util-linux's unshare (scripts/install.sh --tests installs them)")

SANDBOX = r"""
set -u
T=$1
ip link set lo up
mkdir -p /run/docker/plugins && mount -t tmpfs tmpfs /run/docker/plugins
export DOCKER_HOST=unix://$T/docker.sock
dockerd --storage-driver=vfs --iptables=false --ip6tables=false --bridge=none --data-root="$T/docker" \
  --exec-root="/tmp/fqs$$" --pidfile="$T/docker.pid" --host="$DOCKER_HOST" > "$T/dockerd.log" 2>&1 &
for _ in $(seq 300); do docker info > /dev/null 2>&1 && break; sleep 0.2; done
export FERRY_QS_ROOT=$T/root FERRY_QS_SERVICES=daemons
bash scripts/quickstart.sh > "$T/up1.out" 2>&1; echo "up1 $?" >> "$T/rc"
bash scripts/quickstart.sh > "$T/up2.out" 2>&1; echo "up2 $?" >> "$T/rc"
bash scripts/quickstart.sh --down > "$T/down.out" 2>&1; echo "down $?" >> "$T/rc"
ps -ww -eo args > "$T/ps.after"
cat /proc/self/mounts > "$T/mounts.after"
docker rm -f $(docker ps -aq) > /dev/null 2>&1
kill "$(cat "$T/docker.pid")"
wait
rm -rf "/tmp/fqs$$"
"""


def test_quickstart_runs_the_real_job_then_again_then_down(tmp_path):
    t = tmp_path
    proc = subprocess.Popen(
        ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--propagation", "private",
         "bash", "-c", SANDBOX, "sandbox", str(t)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=280)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)     # the sandbox's init dies: the kernel kills the rest
        proc.wait()
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def text(name: str) -> str:
        p = t / name
        return p.read_text(errors="replace") if p.exists() else f"<{name} missing>"

    rcs = dict(line.split() for line in text("rc").splitlines() if line.strip())
    logs = (f"sandbox:\n{out.decode(errors='replace')}\nup1:\n{text('up1.out')}\nup2:\n{text('up2.out')}\n"
            f"down:\n{text('down.out')}\nquickstart log (tail):\n"
            f"{text('root/var/log/ferry-quickstart.log')[-4000:]}\ndockerd log (tail):\n{text('dockerd.log')[-2000:]}")
    assert rcs.get("up1") == "0", logs
    up1 = text("up1.out")
    assert "container 2 read: written by container 1 at" in up1, logs
    assert "demo" in up1.split("container 2 read:")[1], f"ferry status does not show the volume:\n{logs}"
    assert "control service: started" in up1 and "agent: started" in up1, logs
    assert "#token=" in up1 and "http://127.0.0.1:7451/" in up1, logs
    assert (t / "root/var/lib/ferry/store").is_dir(), "the file:// store was not created"

    assert rcs.get("up2") == "0", logs
    up2 = text("up2.out")
    assert "control service: already running" in up2 and "agent: already running" in up2, logs
    assert "docker volume demo: already there" in up2, logs
    assert "container 2 read: written by container 1 at" in up2, logs

    assert rcs.get("down") == "0", logs
    left = [a for a in text("ps.after").splitlines() if str(t / "root") in a]
    assert not left, "--down left these running:\n" + "\n".join(left) + f"\n{logs}"
    mounts = [m for m in text("mounts.after").splitlines() if str(t / "root") in m]
    assert not mounts, "--down left these mounted:\n" + "\n".join(mounts) + f"\n{logs}"
    assert not (t / "root/run/ferry-quickstart").exists(), "--down left its run directory"
    # --down keeps the data: the store still holds the volume
    assert any((t / "root/var/lib/ferry/store").rglob("*")), "--down (without --purge) deleted the store"
