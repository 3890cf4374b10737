"""A real dockerd (Debian's docker.io) on a simulated host, with a busybox
image made by `docker import` of Debian's busybox-static.

Each dockerd runs inside its host's network and mount namespaces with its own
data root, exec root (where it keeps its managed containerd's sockets) and
API socket; `--bridge=none --iptables=false`: containers run with
`--network none`. It finds the ferry plugin at /run/docker/plugins/ferry.sock,
which is a tmpfs private to the host, so two hosts' dockerds each see their
own agent only.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from tests.cluster.netns import SimHost

IMAGE = "ferry-test-busybox"
DOCKER = "/usr/bin/docker"          # docker.io's client, matching its daemon's API
APPLETS = ("sh", "cat", "echo", "ls", "sleep", "sha256sum", "dd", "sync", "test", "head", "wc", "df", "tail")


def available() -> str | None:
    """Why Docker tests cannot run here, or None."""
    for tool in ("/usr/sbin/dockerd", DOCKER, "/usr/bin/busybox"):
        if not os.path.exists(tool):
            return f"{tool} missing (apt install docker.io busybox-static)"
    return None


def busybox_tar(workdir: Path) -> Path:
    """A root filesystem tarball: /bin/busybox and its applets, nothing else."""
    tar_path = workdir / "busybox-rootfs.tar"
    if tar_path.exists():
        return tar_path
    root = workdir / "busybox-rootfs"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/busybox", root / "bin" / "busybox")
    for a in APPLETS:
        link = root / "bin" / a
        if not link.exists():
            link.symlink_to("busybox")
    for d in ("data", "tmp", "proc", "sys", "dev", "etc"):
        (root / d).mkdir(exist_ok=True)
    with tarfile.open(tar_path, "w") as t:
        t.add(root, arcname=".")
    return tar_path


class Dockerd:
    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.dir = host.dir / "docker"
        self.dir.mkdir(exist_ok=True)
        self.sock = self.api_socket(host)
        self.log = self.dir / "dockerd.log"
        # Short: containerd's sockets live under it, and unix socket paths are
        # limited to 107 bytes (pytest's tmp paths are long).
        self.exec_root = Path(f"/tmp/fdk{os.getpid()}{host.name}")
        shutil.rmtree(self.exec_root, ignore_errors=True)
        self.proc = host.popen(
            ["/usr/sbin/dockerd", "--storage-driver=vfs", "--iptables=false", "--ip6tables=false",
             "--bridge=none", f"--data-root={self.dir / 'data'}", f"--exec-root={self.exec_root}",
             f"--pidfile={self.dir / 'docker.pid'}", f"--host=unix://{self.sock}"], self.log)
        try:
            deadline = time.monotonic() + 60
            while self.docker("info", check=False).returncode != 0:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dockerd on {host.name} did not start:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.2)
            with open(busybox_tar(host.dir.parent), "rb") as f:
                r = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", "import", "-", IMAGE], stdin=f,
                                   capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"docker import failed on {host.name}: {r.stderr}")
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def api_socket(host: SimHost) -> Path:
        """Where this host's dockerd serves its API (known before it starts:
        the host's agent is told at its own start)."""
        return host.dir / "docker" / "docker.sock"

    def docker(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        """The docker CLI against this host's daemon (the API socket is a file:
        no need to enter the host's namespaces)."""
        r = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} on {self.host.name} failed ({r.returncode}): "
                               f"{r.stderr.strip()}")
        return r

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.docker("run", "--network", "none", *args, check=check)

    def stop(self) -> None:
        """Remove containers, then stop dockerd (it stops its containerd)."""
        if self.proc.poll() is None:
            self.docker("rm", "-f", *self.docker("ps", "-aq", check=False).stdout.split(), check=False)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.exec_root, ignore_errors=True)
