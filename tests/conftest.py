"""Shared fixtures: a real S3 wire protocol (moto_server on loopback) and the
file:// store.

moto_server processes run in their own process group and are always killed:
by the fixture's teardown, or, if the session dies before teardown, by an
atexit hook.

Fixtures:
  moto_endpoint   (session)  "http://127.0.0.1:PORT" of a shared moto_server
  s3_store_url               "s3://BUCKET?endpoint=...&region=us-east-1", a fresh bucket
  file_store_url             "file:///.../store", a fresh existing directory
  store_url                  parametrized over ["file", "s3"]: one of the two above
  store                      open_store(store_url), closed afterwards
  moto_control               a private, stoppable moto_server (MotoServer), for outage tests
  new_mount                  factory of FerryMount instances, cleaned up afterwards
  etcd1           (session)  a one-member etcd (tests.helpers.etcd.EtcdCluster); tests use own prefixes
"""
from __future__ import annotations

import atexit
import contextlib
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
from hypothesis import HealthCheck, settings

# Property tests run beside FUSE daemons and moto on 2 cores: generation can
# be slow for reasons that say nothing about the code. Time limits stay off;
# what each test checks is unchanged.
settings.register_profile("ferry", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ferry")

# Set before anything creates a boto3 client; subprocesses (ferry daemons)
# inherit them. moto accepts any credentials.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true",
                     help="also run tests marked slow (long randomized runs); so does -m slow or FERRY_RUN_SLOW=1")


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` (hundreds of crash trials, PostgreSQL under
    kill -9) run only when asked for: they are run before an issue that
    touches their area is resolved, not in every CI run."""
    if (config.getoption("--run-slow") or os.environ.get("FERRY_RUN_SLOW") == "1"
            or "slow" in (config.getoption("-m") or "")):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow, --run-slow or FERRY_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    """A loopback port that was free a moment ago (nothing listens on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def etcd1(tmp_path_factory):
    from tests.helpers.etcd import running_cluster
    with running_cluster(tmp_path_factory.mktemp("etcd1"), members=1) as cluster:
        yield cluster


def _moto_binary() -> str:
    here = Path(sys.executable).parent / "moto_server"
    if here.exists():
        return str(here)
    found = shutil.which("moto_server")
    if not found:
        raise RuntimeError("moto_server not found next to the Python interpreter or on PATH; "
                           "install the test extras: pip install -e '.[test]'")
    return found


_live: set[MotoServer] = set()


@atexit.register
def _kill_leftovers() -> None:
    for srv in list(_live):
        srv.stop()


class MotoServer:
    """A moto_server subprocess on a fixed loopback port.

    stop() kills it abruptly (SIGKILL to its process group: an outage, not a
    clean shutdown); start() brings it back on the same port, so clients keep
    their endpoint URL. moto_server keeps everything in memory and has no
    persistence option (its request recorder can replay history, but records
    requests before handling them, so concurrent conditional writes may
    replay with a different winner): after a restart the store is EMPTY, and
    the test must re-create its bucket (make_bucket). To take a store away
    without losing data, put tests.helpers.tcpproxy.TcpProxy in front of the
    session moto instead.
    """

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_dir / f"moto-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30) -> None:
        """Start (or restart) on self.port; return once it answers HTTP."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([_moto_binary(), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        _live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"moto_server exited with {self.proc.returncode} "
                                       f"(port {self.port} taken?); see {self.log_path}") from None
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not answer within {timeout} s; see {self.log_path}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the server and everything it spawned; idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        _live.discard(self)

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh random name unless given); return its name."""
        return make_bucket(self.endpoint, name)

    def store_url(self, bucket: str) -> str:
        return f"s3://{bucket}?endpoint={self.endpoint}&region=us-east-1"


def _started_moto(log_dir: Path) -> MotoServer:
    """A running MotoServer on a fresh port (retrying if another process
    grabbed the port between free_port() and moto binding it)."""
    for attempt in range(3):
        srv = MotoServer(log_dir)
        try:
            srv.start()
            return srv
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """One moto_server for the whole session: "http://127.0.0.1:PORT"."""
    srv = _started_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield srv.endpoint
    finally:
        srv.stop()


@pytest.fixture
def moto_control(tmp_path):
    """A private moto_server (a MotoServer, already started) that the test
    may stop() and start() again on the same port, to simulate an outage.
    A restart loses all data: re-create the bucket with
    moto_control.make_bucket(name) after start()."""
    srv = _started_moto(tmp_path)
    try:
        yield srv
    finally:
        srv.stop()


def make_bucket(endpoint: str, name: str | None = None) -> str:
    import boto3
    name = name or "b-" + secrets.token_hex(6)
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


@pytest.fixture
def s3_store_url(moto_endpoint):
    """A fresh bucket on the session moto_server, as a store URL."""
    return f"s3://{make_bucket(moto_endpoint)}?endpoint={moto_endpoint}&region=us-east-1"


@pytest.fixture
def file_store_url(tmp_path):
    """A fresh, existing directory, as a store URL."""
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
