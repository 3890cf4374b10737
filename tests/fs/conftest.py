"""A mounted ferry volume for the POSIX tests.

Fixtures:
  volume   module-scoped: one fresh volume (mkfs + mount) per test module and
           store kind; at module end it is unmounted and must fsck clean.
  mnt      a fresh, empty directory on that volume for one test. Default store
           is file://; mark a test @pytest.mark.stores("file", "s3") to run it
           on both (keep that to a small subset: mounts cost time).
  remount  remount(fresh_cache=False): `ferry fs umount` + mount again with the
           same cache dir, or with fresh_cache=True an empty one (as another
           host would). The test's `mnt` path stays valid.

FERRY_POSIX_TARGET=local: `mnt` is a plain local directory and `remount` a
no-op, which proves the tests themselves right before blaming ferry.

Mounting is the slow part, so tests share one mount per module; a test that
kills the daemon fails itself (teardown check) and the next test gets a
recovered mount instead of failing in turn.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.helpers.mount import FSTYPE, FerryMount, fsck, is_mounted

LOCAL = os.environ.get("FERRY_POSIX_TARGET") == "local"
VOLUME = "posix"
KINDS = ("file", "s3")


def pytest_configure(config):
    config.addinivalue_line("markers", "stores(*kinds): tests/fs stores to run on ('file', 's3'); default file")


def pytest_generate_tests(metafunc):
    if "volume" not in metafunc.fixturenames:
        return
    if LOCAL:
        kinds = ["local"]
    else:
        marker = metafunc.definition.get_closest_marker("stores")
        wanted = set(marker.args) if marker else {"file"}
        unknown = wanted - set(KINDS)
        if unknown:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown store kinds {sorted(unknown)}")
        kinds = [k for k in KINDS if k in wanted]
    metafunc.parametrize("volume", kinds, indirect=True, scope="module")


class Volume:
    def __init__(self, kind: str, root: Path, mount: FerryMount | None = None, store_url: str | None = None):
        self.kind = kind
        self.root = root
        self.mount = mount
        self.store_url = store_url

    def remount(self, fresh_cache: bool = False) -> None:
        """Unmount (commits everything, releases the volume) and mount again;
        with fresh_cache the cache dir is emptied first, as on another host."""
        if self.mount is None:
            return
        self.mount.umount()
        if fresh_cache:
            shutil.rmtree(self.mount.cache_dir, ignore_errors=True)
        self.mount.mount(self.store_url, VOLUME)

    def problem(self) -> str | None:
        if self.mount is None:
            return None
        if not self.mount.running:
            code = self.mount.proc.returncode if self.mount.proc else None
            return f"the ferry daemon is not running (exit code {code})"
        if not is_mounted(self.root, FSTYPE):
            return f"{self.root} is no longer a {FSTYPE} mount"
        try:
            os.stat(self.root)
        except OSError as e:
            return f"stat of the mount root fails: {e}"
        return None

    def recover(self) -> None:
        """After a daemon crash: kill what is left, mount again (same host)."""
        self.mount.kill9()
        self.mount.mount(self.store_url, VOLUME)


@pytest.fixture(scope="module")
def volume(request, tmp_path_factory):
    kind = getattr(request, "param", "local" if LOCAL else "file")
    # The mountpoint lives in a 0755 directory (pytest's tmp dirs are 0700) so
    # that a test may act as another uid on it.
    top = Path(tempfile.mkdtemp(prefix="ferry-posix-"))
    os.chmod(top, 0o755)
    if kind == "local":
        try:
            yield Volume(kind, top)
        finally:
            shutil.rmtree(top, ignore_errors=True)
        return
    work = tmp_path_factory.mktemp(f"posix-{kind}")
    if kind == "s3":
        from tests.conftest import make_bucket
        endpoint = request.getfixturevalue("moto_endpoint")
        url = f"s3://{make_bucket(endpoint)}?endpoint={endpoint}&region=us-east-1"
    else:
        (work / "store").mkdir()
        url = f"file://{work / 'store'}"
    m = FerryMount(work, top / "mnt", work / "cache")
    try:
        m.mkfs(url, VOLUME)
        m.mount(url, VOLUME)
        yield Volume(kind, m.mountpoint, m, url)
        # End of the module: everything the tests did must commit, release and
        # leave a consistent volume behind.
        m.umount()
        fsck(url, VOLUME)
    finally:
        m.cleanup()
        if not is_mounted(m.mountpoint):
            shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def mnt(volume) -> Path:
    if volume.problem():
        volume.recover()          # an earlier test broke it and was failed for it
    d = volume.root / f"t-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    problem = volume.problem()
    if problem:
        pytest.fail(f"after this test {problem}; daemon log tail:\n{volume.mount.log()[-6000:]}")


@pytest.fixture
def remount(volume):
    return volume.remount
