"""A mounted ferry volume for POSIX tests: one mount per module (mounting
is the slow part), a fresh directory per test. FERRY_POSIX_TARGET=local runs
the same tests on a plain local directory, which proves the tests
themselves right."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.helpers.mount import FerryMount

LOCAL = os.environ.get("FERRY_POSIX_TARGET") == "local"


class Volume:
    def __init__(self, root: Path, mount: FerryMount | None, store_url: str | None) -> None:
        self.root = root
        self.mount = mount
        self.store_url = store_url

    def remount(self, fresh_cache: bool = False) -> None:
        """Unmount (commit + release) and mount again; with fresh_cache, as another host would."""
        if self.mount is None:
            return
        self.mount.umount()
        if fresh_cache:
            shutil.rmtree(self.mount.cache_dir)
        self.mount.mount(self.store_url, "posix")


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    base = tmp_path_factory.mktemp("posix")
    if LOCAL:
        yield Volume(base, None, None)
        return
    store = base / "store"
    store.mkdir()
    url = f"file://{store}"
    m = FerryMount(base, base / "mnt", base / "cache")
    m.mkfs(url, "posix")
    m.mount(url, "posix")
    try:
        yield Volume(m.mountpoint, m, url)
    finally:
        m.cleanup()


@pytest.fixture
def mnt(volume) -> Path:
    d = volume.root / f"t-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    return d
