"""Shared fixtures: a real S3 wire protocol (moto_server on loopback) and the
file:// store. Processes are started in their own process group and always
killed, even when a test fails."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moto_binary() -> str:
    here = Path(sys.executable).parent / "moto_server"
    return str(here) if here.exists() else (shutil.which("moto_server") or "moto_server")


class MotoServer:
    """A moto_server subprocess on a fixed loopback port (restartable; moto
    keeps no data across restarts)."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log = open(log_dir / f"moto-{self.port}.log", "ab")
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([_moto_binary(), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1)
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    srv = MotoServer(tmp_path_factory.mktemp("moto"))
    srv.start()
    try:
        yield srv.endpoint
    finally:
        srv.stop()


def make_bucket(endpoint: str) -> str:
    import boto3
    name = "b-" + secrets.token_hex(6)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store_url(moto_endpoint):
    return f"s3://{make_bucket(moto_endpoint)}?endpoint={moto_endpoint}&region=us-east-1"


@pytest.fixture
def file_store_url(tmp_path):
    d = tmp_path / "store"
    d.mkdir()
    return f"file://{d}"


@pytest.fixture(params=["file", "s3"])
def store_url(request):
    return request.getfixturevalue(f"{request.param}_store_url")


@pytest.fixture
def store(store_url):
    from fsd.store import open_store
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def new_mount(tmp_path):
    """Factory: new_mount("a") -> FerryMount with its own mountpoint and cache
    dir under tmp_path; every one is unmounted/killed at teardown."""
    from tests.helpers.mount import FerryMount
    made = []

    def make(name: str) -> FerryMount:
        m = FerryMount(tmp_path, tmp_path / f"mnt-{name}", tmp_path / f"cache-{name}")
        made.append(m)
        return m

    try:
        yield make
    finally:
        for m in made:
            m.cleanup()
