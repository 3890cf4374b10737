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
    def __init__(self, host: SimHost, extra_args: tuple[str, ...] = (), *, slave_data_root: bool = False) -> None:
        self.host = host
        self.extra_args = extra_args         # e.g. ("--live-restore",)
        self.dir = host.dir / "docker"
        self.dir.mkdir(exist_ok=True)
        if slave_data_root:
            self._slave_data_root()
        self.sock = self.api_socket(host)
        self.log = self.dir / "dockerd.log"
        # Short: containerd's sockets live under it, and unix socket paths are
        # limited to 107 bytes (pytest's tmp paths are long).
        self.exec_root = Path(f"/tmp/fdk{os.getpid()}{host.name}")
        shutil.rmtree(self.exec_root, ignore_errors=True)
        try:
            self._start()
            with open(busybox_tar(host.dir.parent), "rb") as f:
                r = subprocess.run([DOCKER, "-H", f"unix://{self.sock}", "import", "-", IMAGE], stdin=f,
                                   capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"docker import failed on {host.name}: {r.stderr}")
        except BaseException:
            self.stop()
            raise

    def _slave_data_root(self) -> None:
        """Put the data root on a mount that receives propagation but does not send it (a slave),
        as on hosts whose docker.service has MountFlags=slave, or a dockerd run in a container
        with rslave propagation. dockerd keeps such a root as it is (it makes only a private
        one shared), so a managed plugin's propagated mount is the only path from the plugin's
        mounts to the host's."""
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        for args in (["--bind"], ["--make-shared"], ["--bind"], ["--make-slave"]):
            self.host.run("mount", *args, *([str(data), str(data)] if args == ["--bind"] else [str(data)]))

    def _start(self) -> None:
        self.proc = self.host.popen(
            ["/usr/sbin/dockerd", "--storage-driver=vfs", "--iptables=false", "--ip6tables=false",
             "--bridge=none", f"--data-root={self.dir / 'data'}", f"--exec-root={self.exec_root}",
             f"--pidfile={self.dir / 'docker.pid'}", f"--host=unix://{self.sock}", *self.extra_args], self.log)
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dockerd on {self.host.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def restart(self, *, kill: bool = False) -> None:
        """Stop dockerd (SIGTERM, as `systemctl restart docker` does; or kill -9) and start it again
        with the same data root, exec root and flags. Containers are left to dockerd: it stops them
        on SIGTERM unless --live-restore, and restores or restarts them by their policy."""
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(timeout=60)
        if kill:
            self._forget_dead_containerd()
        self._start()

    def _forget_dead_containerd(self) -> None:
        """dockerd's managed containerd dies with it (parent-death signal) and is left a zombie
        until an init reaps it; this machine's init reaps late, and a dockerd started meanwhile
        takes the zombie's pid file for a live containerd and times out dialing it. A host's
        systemd reaps at once; do what it would: wait for the reaping, then drop the pid file."""
        pid_file = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                return                       # reaped: the next dockerd starts a new containerd
            if state == "Z":
                pid_file.unlink(missing_ok=True)
                return
            time.sleep(0.1)                  # still dying (or alive: then the next dockerd reuses it)

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
