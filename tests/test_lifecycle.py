"""Volume lifecycle on a real store (moto_server and file://): removal that
really removes (fenced first, resumable after kill -9), reused names that
start empty, and GC that frees the store without losing an acknowledged
byte - while a writer runs, across crashes, against a stale frozen owner
and against a store that fails mid-pass."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fsd.format import keys
from fsd.gc.run import collect
from fsd.store import open_store
from fsd.store.base import StoreUnavailable
from fsd.volume import objects as vol_mod
from tests.helpers.mount import MountError, fsck_clean, fsync_dir, run_ferry, write_fsync

VOL = "vol"


def _objects(store_url: str, prefix: str = VOL + "/") -> list[str]:
    store = open_store(store_url)
    try:
        return list(store.list(prefix))
    finally:
        store.close()


def _ferry(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_ferry(*args, env=env)


def _root(store_url: str) -> str:
    store = open_store(store_url)
    try:
        return vol_mod.locate(store, VOL)[0].root
    finally:
        store.close()


# ------------------------------------------------------------------ removal


def test_rm_deletes_everything_and_a_reused_name_starts_empty(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL)
    write_fsync(a.mountpoint / "big", os.urandom(3 << 20))
    (a.mountpoint / "dir").mkdir()
    write_fsync(a.mountpoint / "dir" / "small", b"secret")
    a.umount()
    assert len(_objects(store_url)) > 5
    r = _ferry("fs", "rm", "--store", store_url, VOL)
    assert r.returncode == 0, r.stderr
    assert "removed volume vol" in r.stdout
    assert _objects(store_url) == []
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL)
    assert os.listdir(a.mountpoint) == []
    a.umount()
    fsck_clean(store_url, VOL)


def test_rm_refuses_a_mounted_volume_and_force_fences_its_owner(file_store_url, new_mount):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL, options=["commit_interval=0.2"])
    write_fsync(a.mountpoint / "x", b"1")
    r = _ferry("fs", "rm", "--store", file_store_url, VOL)
    assert r.returncode == 1 and "in use" in r.stderr and "--force" in r.stderr
    assert len(_objects(file_store_url)) > 0
    r = _ferry("fs", "rm", "--store", file_store_url, VOL, "--force")
    assert r.returncode == 0, r.stderr
    with pytest.raises(OSError) as exc:
        write_fsync(a.mountpoint / "y", b"after removal")
    assert exc.value.errno in (errno.EIO, errno.EROFS)
    # Only the seal that keeps this (still running) owner fenced remains.
    left = _objects(file_store_url)
    assert len(left) == 1 and "/journal/" in left[0], left
    a.kill9()


def test_a_name_reused_while_its_removal_is_pending_never_sees_the_old_volume(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL)
    write_fsync(a.mountpoint / "old-file", b"old owner's data")
    a.umount()
    store = open_store(store_url)
    try:
        from fsd.lifecycle.removal import begin_removal
        old = begin_removal(store, VOL)          # fenced and marked, nothing deleted yet
    finally:
        store.close()
    r = _ferry("fs", "mount", "--store", store_url, "--cache-dir", str(a.cache_dir), VOL, str(a.mountpoint))
    assert r.returncode == 1
    a.mkfs(store_url, VOL, options=["history=0"])                        # a new incarnation, next to the old objects
    a.mount(store_url, VOL)
    assert os.listdir(a.mountpoint) == []
    write_fsync(a.mountpoint / "new-file", b"new")
    a.umount()
    assert any(k.startswith(old.root + "/") for k in _objects(store_url))
    r = _ferry("fs", "rm", "--store", store_url, VOL)         # finishes the old one; the new one is in use? no:
    assert r.returncode == 0, r.stderr                        # released, so it is removed too
    assert _objects(store_url) == []


@pytest.mark.parametrize("point", ["removal_after_claim", "removal_between_deletions:2"])
def test_kill9_during_removal_then_the_next_run_finishes(file_store_url, new_mount, point):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL)
    for i in range(3):
        write_fsync(a.mountpoint / f"f{i}", os.urandom(1100 * 1024))   # whole data objects
    a.umount()
    r = _ferry("fs", "rm", "--store", file_store_url, VOL, env={"FERRY_FAILPOINTS": point})
    assert r.returncode == -signal.SIGKILL
    # Never a half-volume that mounts:
    r = _ferry("fs", "mount", "--store", file_store_url, "--cache-dir", str(a.cache_dir), VOL, str(a.mountpoint))
    assert r.returncode == 1 and ("being removed" in r.stderr or "does not exist" in r.stderr), r.stderr
    r = _ferry("fs", "rm", "--store", file_store_url, VOL)
    assert r.returncode == 0, r.stderr
    assert _objects(file_store_url) == []


# ----------------------------------------------------------------------- GC


def _gc(store_url: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return _ferry("fs", "gc", "--store", store_url, VOL, "--grace", "0", *extra, env=env)


def test_gc_frees_overwritten_data_and_folded_journal(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL)
    final = b""
    for _ in range(4):
        final = os.urandom(2 << 20)
        write_fsync(a.mountpoint / "f", final)
    for i in range(30):
        write_fsync(a.mountpoint / f"s{i}", str(i).encode())
    a.umount()
    root = _root(store_url)
    before = _objects(store_url, keys.data_prefix(root))
    dry = _gc(store_url, "--dry-run")
    assert dry.returncode == 0 and "would delete" in dry.stdout
    assert _objects(store_url, keys.data_prefix(root)) == before        # a dry run deletes nothing
    r = _gc(store_url)
    assert r.returncode == 0, r.stderr
    after = _objects(store_url, keys.data_prefix(root))
    assert len(after) == 2 < len(before)                                  # the live 2 MiB
    assert len(_objects(store_url, keys.journal_prefix(root))) <= 4
    a.mount(store_url, VOL)
    assert (a.mountpoint / "f").read_bytes() == final
    assert [(a.mountpoint / f"s{i}").read_text() for i in range(30)] == [str(i) for i in range(30)]
    a.umount()
    fsck_clean(store_url, VOL)
    info = _ferry("fs", "inspect", "--store", store_url, VOL).stdout
    assert "last_gc" in info


def test_writer_keeps_every_acknowledged_byte_through_many_gc_rounds(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL, options=["commit_interval=0.2", "snapshot_every=8"])
    acked: dict[str, bytes] = {}
    rnd = __import__("random").Random(7)
    for _rnd_i in range(6):
        for _i in range(8):
            name = f"f{rnd.randrange(6)}"
            data = os.urandom(rnd.choice([100, 70_000, 1_300_000]))
            write_fsync(a.mountpoint / name, data)
            acked[name] = data
            if rnd.random() < 0.3:
                os.unlink(a.mountpoint / name)
                fsync_dir(a.mountpoint)                     # the unlink is durable once the dir is fsynced
                acked.pop(name)
        if not os.environ.get("NO_GC"):
            r = _gc(store_url)
            assert r.returncode == 0, r.stderr + a.log()
    a.kill9()                                   # no clean release: a takeover must find it all
    b = new_mount("b")
    b.mount(store_url, VOL, takeover=True)
    got = {p.name: p.read_bytes() for p in b.mountpoint.iterdir()}
    assert sorted(got) == sorted(acked)
    for name in got:
        assert got[name] == acked[name], (name, len(got[name]), len(acked[name]))
    b.umount()
    assert _gc(store_url).returncode == 0
    fsck_clean(store_url, VOL)


@pytest.mark.parametrize("point", ["gc_after_snapshot", "gc_between_deletions"])
def test_kill9_during_gc_loses_nothing(file_store_url, new_mount, point):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL)
    for _ in range(3):
        write_fsync(a.mountpoint / "f", os.urandom(1200 * 1024))
    for i in range(40):
        write_fsync(a.mountpoint / f"s{i}", b"x")
    a.kill9()               # unreleased: the journal after the last snapshot is GC's to fold
    r = _gc(file_store_url, env={"FERRY_FAILPOINTS": point})
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    a.mount(file_store_url, VOL)            # same cache dir: recovers its own crashed epoch
    assert len(os.listdir(a.mountpoint)) == 41
    a.umount()
    fsck_clean(file_store_url, VOL)
    assert _gc(file_store_url).returncode == 0
    fsck_clean(file_store_url, VOL)


class _FailingStore:
    """The real store, with LIST or GET failing once `armed` calls have passed."""

    def __init__(self, inner, op: str, after: int) -> None:
        self.inner, self.op, self.left = inner, op, after
        self.url = inner.url
        self.deleted: list[str] = []

    def _tick(self, op: str) -> None:
        if op == self.op:
            self.left -= 1
            if self.left < 0:
                raise StoreUnavailable(f"injected {op} failure")

    def list(self, prefix, start_after=""):
        self._tick("list")
        return self.inner.list(prefix, start_after)

    def list_info(self, prefix, start_after=""):
        self._tick("list")
        return self.inner.list_info(prefix, start_after)

    def get(self, key, start=None, end=None):
        self._tick("get")
        return self.inner.get(key, start, end)

    def delete(self, key):
        self.deleted.append(key)
        return self.inner.delete(key)

    def delete_many(self, keys):
        self.deleted.extend(keys)
        return self.inner.delete_many(keys)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("op", ["list", "get"])
def test_gc_with_a_failing_store_deletes_nothing(store_url, new_mount, op):
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL)
    for _i in range(3):
        write_fsync(a.mountpoint / "f", os.urandom(1200 * 1024))
    a.umount()
    store = open_store(store_url)
    try:
        # Count the calls a clean pass makes, then fail at every one of them in turn.
        probe = _FailingStore(store, op, 10**9)
        collect(probe, VOL, dry_run=True, grace_s=0)
        calls = 10**9 - probe.left
        assert calls > 0
        for n in range(calls):
            s = _FailingStore(store, op, n)
            with pytest.raises(StoreUnavailable):
                collect(s, VOL, grace_s=0)
            assert s.deleted == [], f"deleted after the {op} #{n} failed"
        # A checker that cannot fail is a defect: a clean pass does delete.
        ok = _FailingStore(store, op, 10**9)
        collect(ok, VOL, grace_s=0)
        assert ok.deleted
    finally:
        store.close()
    fsck_clean(store_url, VOL)


def test_stale_writer_frozen_across_takeover_and_gc_commits_and_recreates_nothing(file_store_url, new_mount):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL, options=["commit_interval=3600"])
    write_fsync(a.mountpoint / "before", b"acked by a")
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        b = new_mount("b")
        b.mount(file_store_url, VOL, takeover=True)
        for i in range(20):
            write_fsync(b.mountpoint / f"b{i}", os.urandom(50_000))
        b.umount()
        assert _gc(file_store_url).returncode == 0
        root = _root(file_store_url)
        journal_before = set(_objects(file_store_url, keys.journal_prefix(root)))
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    with pytest.raises(OSError):
        write_fsync(a.mountpoint / "after", b"must not be acknowledged")
    time.sleep(0.5)
    assert set(_objects(file_store_url, keys.journal_prefix(root))) == journal_before
    a.kill9()
    b.mount(file_store_url, VOL)
    names = set(os.listdir(b.mountpoint))
    assert "before" in names and "after" not in names and len(names) == 21
    b.umount()
    fsck_clean(file_store_url, VOL)


def test_mount_refuses_a_journal_gc_compacted_past_every_start(file_store_url, new_mount):
    """Fail closed: if the only snapshot left is unreadable, replaying the
    compacted journal from an older point would silently lose state."""
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL)
    for i in range(10):
        write_fsync(a.mountpoint / f"f{i}", b"x")
    a.umount()
    assert _gc(file_store_url).returncode == 0
    root = _root(file_store_url)
    store_dir = Path(file_store_url[len("file://"):])
    for snap in _objects(file_store_url, keys.snapshots_prefix(root)):
        (store_dir / snap).write_bytes(b"garbage")
    b = new_mount("b")
    with pytest.raises(MountError, match="cannot rebuild the metadata"):
        b.mount(file_store_url, VOL, cache_dir=b.cache_dir)
