"""User snapshots (issue 9, first part): consistent while a writer runs,
pinned against GC (standalone and the owner's), pending pins that defer GC,
abandoned ones cleaned, kill -9 mid-create. Real mounts, both stores."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from fsd.backup import snapshots
from fsd.format import keys
from fsd.format.pin import PENDING, PENDING_TIMEOUT_NS, Pin
from fsd.store import open_store
from fsd.volume import objects as vol_mod
from tests.helpers.mount import fsck_clean, run_ferry, write_fsync
from tests.helpers.objects import count_objects

VOL = "vol"


def snap_file(store_url: str, snap: str, path: str) -> bytes | None:
    store = open_store(store_url)
    try:
        ref, state = snapshots.open_state(store, VOL, snap)
        try:
            ino = snapshots.lookup(state, path)
        except KeyError:
            return None
        return snapshots.read_file(store, ref.root, state, ino, vol_mod.read_superblock(store, ref).content_hash)
    finally:
        store.close()


def data_objects(store_url: str) -> int:
    return count_objects(store_url, VOL, keys.data_prefix)


def _gc_report(store_url: str) -> dict | None:
    from fsd.gc.run import read_report
    store = open_store(store_url)
    try:
        return read_report(store, vol_mod.locate(store, VOL)[0].root)
    finally:
        store.close()


def snap_cli(m, *args: str):
    return run_ferry("fs", "snapshot", *args, env={"FERRY_RUN_DIR": str(m.run_dir)})


def test_snapshot_of_a_mounted_volume_holds_a_prefix_of_the_writer(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL, options=["commit_interval=30"])        # only fsync and the snapshot commit
    started = acked = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal started, acked
        with open(a.mountpoint / "log", "ab") as f:
            while not stop.is_set():
                started += 1
                f.write(f"{started - 1}\n".encode())
                f.flush()
                os.fsync(f.fileno())
                acked += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.5)
        (a.mountpoint / "unsynced").write_bytes(b"written, never fsynced")   # create must commit it
        acked_before = acked
        r = snap_cli(a, "create", "--store", store_url, VOL, "s1")
        started_after = started
        assert r.returncode == 0, r.stderr
        assert "committed the mount" in r.stdout
        time.sleep(0.3)
        (a.mountpoint / "later").write_bytes(b"after the snapshot")
    finally:
        stop.set()
        t.join()
    log = snap_file(store_url, "s1", "log")
    lines = log.decode().splitlines()
    assert lines == [str(i) for i in range(len(lines))], "not a prefix of what the writer wrote"
    assert acked_before <= len(lines) <= started_after, (acked_before, len(lines), started_after)
    assert snap_file(store_url, "s1", "unsynced") == b"written, never fsynced"
    assert snap_file(store_url, "s1", "later") is None
    r = snap_cli(a, "ls", "--store", store_url, VOL)
    assert "s1" in r.stdout and "ready" in r.stdout
    a.umount()
    fsck_clean(store_url, VOL)


def test_gc_keeps_what_a_snapshot_references_until_it_is_removed(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL)
    old = os.urandom(2_500_000)
    write_fsync(a.mountpoint / "f", old)
    assert snap_cli(a, "create", "--store", store_url, VOL, "before").returncode == 0
    write_fsync(a.mountpoint / "f", os.urandom(2_500_000))
    a.umount()
    r = run_ferry("fs", "gc", "--store", store_url, VOL, "--grace", "0")
    assert r.returncode == 0, r.stderr
    assert snap_file(store_url, "before", "f") == old
    fsck_clean(store_url, VOL)
    with_snapshot = data_objects(store_url)
    assert snap_cli(a, "rm", "--store", store_url, VOL, "before").returncode == 0
    assert run_ferry("fs", "gc", "--store", store_url, VOL, "--grace", "0").returncode == 0
    assert data_objects(store_url) == with_snapshot - 3             # the old file's three blocks
    fsck_clean(store_url, VOL)


def test_the_owners_gc_keeps_a_snapshot_taken_while_mounted(file_store_url, new_mount):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL, options=["gc_interval=0.3s", "gc_grace=0", "snapshot_every=4"])
    old = os.urandom(1_500_000)
    write_fsync(a.mountpoint / "f", old)
    assert snap_cli(a, "create", "--store", file_store_url, VOL, "s").returncode == 0
    for _ in range(4):
        write_fsync(a.mountpoint / "f", os.urandom(1_500_000))
    t0 = time.time_ns()
    deadline = time.monotonic() + 30
    while True:                                           # a whole pass after the overwrites
        r = _gc_report(file_store_url)
        if r and r["started_ns"] > t0 and r["finished_ns"]:
            break
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.1)
    assert "GC freed" in a.log()                          # the overwritten versions went
    assert snap_file(file_store_url, "s", "f") == old
    a.umount()
    fsck_clean(file_store_url, VOL)


def _put_pin(store_url: str, pin: Pin) -> None:
    store = open_store(store_url)
    try:
        root = vol_mod.locate(store, VOL)[0].root
        store.put(keys.pin_key(root, "snap", pin.name), pin.encode())
    finally:
        store.close()


def test_a_pending_snapshot_defers_gc_and_an_abandoned_one_is_cleaned(file_store_url, new_mount):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL)
    write_fsync(a.mountpoint / "f", os.urandom(1_100_000))
    write_fsync(a.mountpoint / "f", os.urandom(1_100_000))            # the first version is garbage
    a.umount()
    before = data_objects(file_store_url)
    _put_pin(file_store_url, Pin("snap", "busy", PENDING, (2, 1), time.time_ns()))
    r = run_ferry("fs", "gc", "--store", file_store_url, VOL, "--grace", "0", "--json")
    assert r.returncode == 0, r.stderr
    deferred = json.loads(r.stdout)["kept_deferred"]
    assert deferred >= 1 and data_objects(file_store_url) == before
    _put_pin(file_store_url, Pin("snap", "busy", PENDING, (2, 1), time.time_ns() - PENDING_TIMEOUT_NS - 10**9))
    assert "abandoned" in snap_cli(a, "ls", "--store", file_store_url, VOL).stdout
    assert run_ferry("fs", "gc", "--store", file_store_url, VOL, "--grace", "0").returncode == 0
    assert data_objects(file_store_url) == before - deferred
    assert "no snapshots" in snap_cli(a, "ls", "--store", file_store_url, VOL).stdout
    fsck_clean(file_store_url, VOL)


def test_kill9_while_creating_leaves_a_pending_snapshot_only(file_store_url, new_mount):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL)
    write_fsync(a.mountpoint / "f", b"x" * 5000)
    r = run_ferry("fs", "snapshot", "create", "--store", file_store_url, VOL, "s",
                  env={"FERRY_RUN_DIR": str(a.run_dir), "FERRY_FAILPOINTS": "snapshot_after_pending"})
    assert r.returncode == -signal.SIGKILL
    out = snap_cli(a, "ls", "--store", file_store_url, VOL).stdout
    assert "pending" in out
    r = snap_cli(a, "create", "--store", file_store_url, VOL, "s")
    assert r.returncode == 1 and "being created" in r.stderr
    with pytest.raises(snapshots.SnapshotError):
        snap_file(file_store_url, "s", "f")
    a.umount()
    fsck_clean(file_store_url, VOL)


def test_snapshot_errors_are_clear(file_store_url, new_mount):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    assert snap_cli(a, "create", "--store", file_store_url, VOL, "s").returncode == 0   # unmounted: fine too
    r = snap_cli(a, "create", "--store", file_store_url, VOL, "s")
    assert r.returncode == 1 and "exists already" in r.stderr
    r = snap_cli(a, "rm", "--store", file_store_url, VOL, "nope")
    assert r.returncode == 1 and "no snapshot 'nope'" in r.stderr
    r = snap_cli(a, "create", "--store", file_store_url, VOL, "bad/name")
    assert r.returncode == 2 and "snapshot name" in r.stderr
    r = snap_cli(a, "create", "--store", file_store_url, "ghost", "s")
    assert r.returncode == 1
