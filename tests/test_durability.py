"""SPEC §2 guarantees on real mounts: fsync durability, crash recovery,
fencing of a stale writer, store outages. Each test can fail: it checks
bytes on a *different* mount (new cache dir, or after kill -9), never the
writer's own view."""
from __future__ import annotations

import contextlib
import errno
import os
import time

import pytest

from fsd.format import keys
from tests.helpers.mount import MountError, fsck_clean, write_fsync
from tests.helpers.objects import count_objects

VOL = "vol"


_write_fsync = write_fsync


def _fsck_clean(store_url: str) -> None:
    fsck_clean(store_url, VOL)


def test_fsync_survives_kill9_on_fresh_host(store_url, new_mount):
    """Host loss: kill -9 right after fsync; another 'host' (fresh cache dir)
    must need --takeover, then see every acknowledged byte."""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL)
    payload = os.urandom(3 * 1024 * 1024 + 123)
    _write_fsync(a.mountpoint / "acked.bin", payload)
    os.makedirs(a.mountpoint / "d1/d2")
    _write_fsync(a.mountpoint / "d1/d2/small", b"hello")
    os.sync()
    a.kill9()

    b = new_mount("b")
    with pytest.raises(MountError) as exc:
        b.mount(store_url, VOL)
    assert "--takeover" in str(exc.value)
    b.mount(store_url, VOL, takeover=True)
    assert (b.mountpoint / "acked.bin").read_bytes() == payload
    assert (b.mountpoint / "d1/d2/small").read_bytes() == b"hello"
    b.umount()
    _fsck_clean(store_url)


def test_same_host_remount_after_kill9_needs_no_takeover(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL)
    _write_fsync(a.mountpoint / "f", b"x" * 10000)
    a.kill9()
    a.mount(store_url, VOL)          # same cache dir: recognises its own epoch
    assert (a.mountpoint / "f").read_bytes() == b"x" * 10000
    a.umount()
    _fsck_clean(store_url)


@pytest.mark.parametrize("point", ["after_blocks_uploaded", "after_segment_written", "before_snapshot_put"])
def test_kill_at_chosen_commit_points(store_url, new_mount, point):
    """kill -9 mid-commit (between data upload and journal write, right after
    the journal write, mid-snapshot): what was fsync-acknowledged before is
    there, the tree is consistent, fsck is clean."""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL)
    _write_fsync(a.mountpoint / "before", b"acknowledged")
    a.umount()
    env = {"FERRY_FAILPOINTS": point}
    opts = ["snapshot_every=1"] if point == "before_snapshot_put" else []
    a.mount(store_url, VOL, options=opts, extra_env=env)
    # the daemon died under us: not acknowledged, may be absent
    with contextlib.suppress(OSError):
        _write_fsync(a.mountpoint / "during", os.urandom(200_000))
    a.wait_dead(timeout=30)
    a.cleanup_dead_mount()
    b = new_mount("b")
    b.mount(store_url, VOL, takeover=True)
    assert (b.mountpoint / "before").read_bytes() == b"acknowledged"
    if (b.mountpoint / "during").exists():
        assert (b.mountpoint / "during").stat().st_size in (0, 200_000)
    b.umount()
    _fsck_clean(store_url)


def test_stale_writer_is_fenced(store_url, new_mount):
    """Mount A keeps writing; B takes over. A's next fsync fails with EIO;
    everything A acknowledged is on B; nothing A wrote after the seal is."""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL, options=["commit_interval=3600"])
    _write_fsync(a.mountpoint / "acked", b"before takeover")
    b = new_mount("b")
    b.mount(store_url, VOL, takeover=True)
    with pytest.raises(OSError) as exc:
        _write_fsync(a.mountpoint / "late", b"after takeover")
    assert exc.value.errno in (errno.EIO, errno.EROFS)
    with pytest.raises(OSError) as exc2:
        (a.mountpoint / "later").write_bytes(b"x")
    assert exc2.value.errno in (errno.EROFS, errno.EIO)
    assert (b.mountpoint / "acked").read_bytes() == b"before takeover"
    assert not (b.mountpoint / "late").exists()
    # B's own writes are durable and A cannot disturb them.
    _write_fsync(b.mountpoint / "b-file", b"owned by b")
    a.umount(expect_failure=True)
    b.umount()
    c = new_mount("c")
    c.mount(store_url, VOL)
    assert (c.mountpoint / "b-file").read_bytes() == b"owned by b"
    assert not (c.mountpoint / "late").exists()
    c.umount()
    _fsck_clean(store_url)


def test_clean_unmount_commits_unsynced_data(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL, options=["commit_interval=3600"])
    data = os.urandom(5 * 1024 * 1024)
    (a.mountpoint / "nosync").write_bytes(data)
    a.umount()
    b = new_mount("b")
    b.mount(store_url, VOL)                # released cleanly: no --takeover needed
    assert (b.mountpoint / "nosync").read_bytes() == data
    b.umount()


def test_remount_starts_from_local_working_copy_and_survives_its_damage(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL)
    (a.mountpoint / "d").mkdir()
    (a.mountpoint / "d/f").write_bytes(b"v1")
    a.umount()
    a.mount(store_url, VOL)
    assert "metadata rebuilt from local" in a.log()
    assert (a.mountpoint / "d/f").read_bytes() == b"v1"
    (a.mountpoint / "d/f").write_bytes(b"v2")
    a.umount()
    (a.cache_dir / "meta.db").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (a.cache_dir / f"meta.db{suffix}").unlink(missing_ok=True)
    a.mount(store_url, VOL)
    assert "metadata rebuilt from local" not in a.log()
    assert (a.mountpoint / "d/f").read_bytes() == b"v2"
    a.umount()
    fsck_clean(store_url, VOL)


def test_kill9_mid_write_keeps_every_acknowledged_prefix(store_url, new_mount):
    """A writer appends and fsyncs in a loop; kill -9 lands mid-write. On the
    new host the file holds at least everything up to the last fsync that
    returned, byte for byte."""
    import threading
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL)
    chunk = 256 * 1024
    acked = [0]
    stop = threading.Event()

    def writer():
        try:
            fd = os.open(a.mountpoint / "stream", os.O_WRONLY | os.O_CREAT, 0o644)
            i = 0
            while not stop.is_set():
                os.write(fd, bytes([i % 251]) * chunk)
                i += 1
                if i % 3 == 0:
                    os.fsync(fd)
                    acked[0] = i * chunk
        except OSError:
            pass

    t = threading.Thread(target=writer)
    t.start()
    deadline = time.monotonic() + 30
    while acked[0] < 4 * 1024 * 1024 and time.monotonic() < deadline:
        time.sleep(0.05)
    a.kill9()
    stop.set()
    t.join()
    assert acked[0] > 0
    b = new_mount("b")
    b.mount(store_url, VOL, takeover=True)
    data = (b.mountpoint / "stream").read_bytes()
    assert len(data) >= acked[0]
    for i in range(acked[0] // chunk):
        assert data[i * chunk:(i + 1) * chunk] == bytes([i % 251]) * chunk, f"chunk {i} differs"
    b.umount()
    fsck_clean(store_url, VOL)


def test_kill9_between_epoch_claim_and_owner_record_needs_no_takeover(store_url, new_mount):
    """kill -9 right after the mount's epoch claim reached the store, before
    its cache dir recorded it: the next mount of the same cache dir must
    still recognise its own epoch (no --takeover), and lose nothing."""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL)
    _write_fsync(a.mountpoint / "f", b"acknowledged")
    a.kill9()
    with pytest.raises(MountError, match="exited with -9"):
        a.mount(store_url, VOL, extra_env={"FERRY_FAILPOINTS": "after_epoch_claimed"})
    a.cleanup_dead_mount()
    a.mount(store_url, VOL)          # same cache dir, no --takeover
    assert (a.mountpoint / "f").read_bytes() == b"acknowledged"
    a.umount()
    _fsck_clean(store_url)


@pytest.mark.parametrize("crash", [False, True])
def test_open_with_o_trunc_truncates_in_the_store(store_url, new_mount, crash):
    """libfuse negotiates atomic O_TRUNC: the kernel sends open(O_TRUNC) and
    no setattr(size=0), and shows the file as empty. ferry once ignored the
    flag, so an acknowledged shorter rewrite came back long, with the old
    tail, after a remount."""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL)
    write_fsync(a.mountpoint / "f", os.urandom(1_300_000))
    short = os.urandom(70_000)
    write_fsync(a.mountpoint / "f", short)           # O_WRONLY | O_CREAT | O_TRUNC
    if crash:
        a.kill9()
        a.mount(store_url, VOL)                      # same cache dir: its own crashed epoch
    else:
        a.umount()
        a.mount(store_url, VOL)
    assert (a.mountpoint / "f").read_bytes() == short
    a.umount()


def _snapshots(store_url: str) -> int:
    return count_objects(store_url, VOL, keys.snapshots_prefix)


def test_a_volume_remounted_after_crashes_still_takes_snapshots(store_url, new_mount):
    """The snapshot cadence counts the journal since the newest snapshot, not
    the few segments a remount replays after its local working copy: a volume
    whose mounts always end in a crash must still snapshot, or every listing,
    remount and takeover grows with its whole history."""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    opts = ["snapshot_every=6"]
    before = _snapshots(store_url)
    for r in range(3):
        a.mount(store_url, VOL, options=opts)
        for i in range(3):
            _write_fsync(a.mountpoint / f"r{r}-{i}", b"x" * (i + 1))
        a.kill9()
    a.mount(store_url, VOL, options=opts)
    _write_fsync(a.mountpoint / "last", b"y")
    deadline = time.monotonic() + 30
    while _snapshots(store_url) <= before:
        assert time.monotonic() < deadline, f"no snapshot after 4 crashed mounts:\n{a.log()}"
        time.sleep(0.05)
    assert sorted(p.name for p in a.mountpoint.iterdir()) == sorted(
        ["last"] + [f"r{r}-{i}" for r in range(3) for i in range(3)])
    a.umount()
    _fsck_clean(store_url)


def test_a_mount_that_finds_the_journal_long_snapshots_without_writing(store_url, new_mount):
    """Mounts too short for the background pass (crashes soon after mounting)
    must not leave the journal growing: a mount that finds `snapshot_every`
    segments after the newest snapshot takes one from the state it loaded,
    before anything is written."""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL, options=["snapshot_every=1000"])
    for i in range(25):
        _write_fsync(a.mountpoint / f"f{i}", b"z" * i)
    a.kill9()
    before = _snapshots(store_url)
    a.mount(store_url, VOL, options=["snapshot_every=20"])
    deadline = time.monotonic() + 30
    while _snapshots(store_url) <= before:
        assert time.monotonic() < deadline, f"the mount took no snapshot:\n{a.log()}"
        time.sleep(0.05)
    assert "taken at mount" in a.log()
    a.kill9()
    b = new_mount("b")          # a new host starts from that snapshot and sees everything
    b.mount(store_url, VOL, takeover=True)
    assert "metadata rebuilt from snapshot" in b.log()
    assert all((b.mountpoint / f"f{i}").read_bytes() == b"z" * i for i in range(25))
    b.umount()
    _fsck_clean(store_url)
