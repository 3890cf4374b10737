"""Faults (SPEC §6): the object store going away, corrupt or missing data
objects, a full cache disk, and local durability across a crash."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import make_bucket
from tests.helpers.mount import MountError, fsck_clean, write_fsync
from tests.helpers.tcpproxy import TcpProxy

VOL = "vol"


@pytest.fixture
def proxied_store_url(moto_endpoint):
    """An s3:// URL whose endpoint is a proxy the test can cut and restore."""
    port = urlsplit(moto_endpoint).port
    proxy = TcpProxy("127.0.0.1", port)
    url = f"s3://{make_bucket(moto_endpoint)}?endpoint={proxy.endpoint}&region=us-east-1"
    try:
        yield url, proxy
    finally:
        proxy.close()


def _fsync_write(path: Path, data: bytes) -> None:
    write_fsync(path, data)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A tmpfs of a few MiB, to fill a cache disk; unmounted afterwards."""
    mounted = []

    def make(size: str) -> Path:
        d = tmp_path / f"tiny-{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount tmpfs: {r.stderr!r}")
        mounted.append(d)
        return d

    try:
        yield make
    finally:
        for d in mounted:
            subprocess.run(["umount", "-l", str(d)])


def test_store_outage_fsync_waits_and_nothing_is_lost(proxied_store_url, new_mount):
    url, proxy = proxied_store_url
    a = new_mount("a")
    a.mkfs(url, VOL)
    a.mount(url, VOL, options=["commit_interval=0.5"])
    proxy.cut()
    data = os.urandom(2 * 1024 * 1024)
    # Writes keep working while the store is down (below the dirty limit).
    (a.mountpoint / "during-outage").write_bytes(data)
    done = threading.Event()
    errors: list[BaseException] = []

    def fsync_it() -> None:
        try:
            fd = os.open(a.mountpoint / "during-outage", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        done.set()

    t = threading.Thread(target=fsync_it)
    t.start()
    # The store is unreachable: fsync cannot have been acknowledged.
    assert not done.wait(3.0), f"fsync returned while the object store was unreachable: {errors}"
    proxy.restore()
    assert done.wait(120), "fsync did not return after the store came back"
    t.join()
    assert not errors, errors
    a.kill9()   # host lost right after the acknowledged fsync
    b = new_mount("b")
    b.mount(url, VOL, takeover=True)
    assert (b.mountpoint / "during-outage").read_bytes() == data
    b.umount()
    fsck_clean(url, VOL)


def _file_store_dir(url: str) -> Path:
    return Path(urlsplit(url).path)


@pytest.mark.parametrize("damage", ["corrupt", "delete"])
def test_damaged_data_object_reads_as_eio_and_is_logged(file_store_url, new_mount, damage):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL)
    a.mount(file_store_url, VOL)
    (a.mountpoint / "victim").write_bytes(b"A" * 300_000)
    # big enough to be a data object of its own, not inline in the journal
    (a.mountpoint / "bystander").write_bytes(b"B" * 100_000)
    ino = os.stat(a.mountpoint / "victim").st_ino
    a.umount()
    objs = sorted(p for p in (_file_store_dir(file_store_url) / VOL).rglob("*") if p.parent.parent.name == "data")
    objs = [p for p in objs if p.is_file()]
    assert len(objs) == 2
    victim = max(objs, key=lambda p: p.stat().st_size)
    if damage == "corrupt":
        raw = bytearray(victim.read_bytes())
        raw[-10] ^= 0xFF
        victim.write_bytes(bytes(raw))
    else:
        victim.unlink()
    b = new_mount("b")   # fresh cache: the block must come from the store
    b.mount(file_store_url, VOL)
    with pytest.raises(OSError) as exc:
        (b.mountpoint / "victim").read_bytes()
    assert exc.value.errno == errno.EIO
    assert (b.mountpoint / "bystander").read_bytes() == b"B" * 100_000
    b.umount()
    log = b.log()
    assert f"inode {ino} block 0" in log and ("corrupt" in log or "missing" in log), log


def test_full_cache_disk_is_not_corruption(file_store_url, new_mount, tiny_tmpfs):
    cache = tiny_tmpfs("3m")
    a = new_mount("a")
    a.cache_dir = cache / "c"
    a.mkfs(file_store_url, VOL)
    a.mount(file_store_url, VOL)
    data = os.urandom(12 * 1024 * 1024)   # four times the cache disk
    _fsync_write(a.mountpoint / "big", data)
    subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"])
    assert (a.mountpoint / "big").read_bytes() == data
    a.umount()
    b = new_mount("b")
    b.mount(file_store_url, VOL)
    assert (b.mountpoint / "big").read_bytes() == data
    b.umount()
    fsck_clean(file_store_url, VOL)


def test_local_durability_survives_kill9_while_store_is_down(proxied_store_url, new_mount):
    """durability=local: fsync returns once in the local journal, even with
    the store unreachable; after kill -9 the same cache dir re-commits it."""
    url, proxy = proxied_store_url
    a = new_mount("a")
    a.mkfs(url, VOL)
    a.mount(url, VOL, options=["durability=local", "commit_interval=0.5"])
    proxy.cut()
    payload = os.urandom(700_000)
    _fsync_write(a.mountpoint / "local-acked", payload)   # must return: local journal
    os.mkdir(a.mountpoint / "dir-acked")
    fd = os.open(a.mountpoint / "dir-acked", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    a.kill9()
    proxy.restore()
    a.mount(url, VOL)        # same cache dir: its own crashed epoch, recovers the journal
    assert (a.mountpoint / "local-acked").read_bytes() == payload
    assert (a.mountpoint / "dir-acked").is_dir()
    a.umount()
    b = new_mount("b")       # another host sees it: it was uploaded at recovery
    b.mount(url, VOL)
    assert (b.mountpoint / "local-acked").read_bytes() == payload
    b.umount()
    fsck_clean(url, VOL)


def test_local_durability_with_full_cache_disk_still_acknowledges_durably(file_store_url, new_mount, tiny_tmpfs):
    """The local journal cannot be written (ENOSPC): fsync must still only
    return once the data is durable - in the store - and nothing is lost."""
    cache = tiny_tmpfs("2m")
    a = new_mount("a")
    a.cache_dir = cache / "c"
    a.mkfs(file_store_url, VOL)
    a.mount(file_store_url, VOL, options=["durability=local"])
    data = os.urandom(6 * 1024 * 1024)
    _fsync_write(a.mountpoint / "big", data)
    a.kill9()
    assert "cannot write the local journal" in a.log()
    b = new_mount("b")
    b.mount(file_store_url, VOL, takeover=True)
    assert (b.mountpoint / "big").read_bytes() == data
    b.umount()
    fsck_clean(file_store_url, VOL)


def test_local_durability_small_writes_journal_ranges_and_recover(proxied_store_url, new_mount):
    """durability=local journals the written ranges of a block, not the whole
    block; after kill -9 (store down) the same cache dir lays them over the
    blocks' committed content and re-commits: byte-exact."""
    import random
    url, proxy = proxied_store_url
    a = new_mount("a")
    a.mkfs(url, VOL)
    a.mount(url, VOL, options=["durability=local", "commit_interval=0.5"])
    model = bytearray(os.urandom(3 * 1024 * 1024))
    _fsync_write(a.mountpoint / "db", bytes(model))
    a.umount()                                   # the base is in the store for sure
    a.mount(url, VOL, options=["durability=local", "commit_interval=0.5"])
    proxy.cut()
    rnd = random.Random(11)
    fd = os.open(a.mountpoint / "db", os.O_RDWR)
    try:
        for _ in range(20):
            off = rnd.randrange(0, len(model) - 5000)
            chunk = os.urandom(rnd.choice((1, 512, 4096)))
            model[off:off + len(chunk)] = chunk
            os.pwrite(fd, chunk, off)
            os.fdatasync(fd)                     # returns: local journal
    finally:
        os.close(fd)
    journal = a.cache_dir / "journal"
    # (log files are preallocated with zeros: what counts is what precedes them)
    sizes = [len(p.read_bytes().rstrip(b"\0")) for p in journal.iterdir()]
    assert sizes and 0 < sum(sizes) < 20 * 64 * 1024, f"local journal holds whole blocks: {sizes}"
    a.kill9()
    proxy.restore()
    a.mount(url, VOL)                            # same cache dir: recovers the ranges
    assert (a.mountpoint / "db").read_bytes() == bytes(model)
    a.umount()
    b = new_mount("b")
    b.mount(url, VOL)
    assert (b.mountpoint / "db").read_bytes() == bytes(model)
    b.umount()
    fsck_clean(url, VOL)


def _acked_small_files(root: Path, n: int) -> dict[str, bytes]:
    """Create up to n files of 1-8 KiB, each fdatasync'ed; return those whose
    fdatasync returned (stops at the first error: the daemon died)."""
    acked: dict[str, bytes] = {}
    for i in range(n):
        name = f"f{i:04d}"
        data = os.urandom(1024 * (1 + i % 8))
        try:
            write_fsync(root / name, data)
        except OSError:
            break
        acked[name] = data
    return acked


@pytest.mark.parametrize("point", ["recovery_before_segment", "recovery_segment_written"])
def test_kill_during_local_recovery_finishes_on_the_next_mount(proxied_store_url, new_mount, point):
    """kill -9 of the mount that is recovering a crashed durability=local
    epoch (before its recovery segment is written, or after it and before the
    seal): the next mount of the same cache dir finishes the job, and every
    locally acknowledged file is there, on this host and on another."""
    url, proxy = proxied_store_url
    a = new_mount("a")
    a.mkfs(url, VOL)
    opts = ["durability=local", "commit_interval=0.5"]
    a.mount(url, VOL, options=opts)
    proxy.cut()
    acked = _acked_small_files(a.mountpoint, 60)
    assert len(acked) == 60
    a.kill9()
    proxy.restore()
    with pytest.raises(MountError, match="exited with -9"):
        a.mount(url, VOL, options=opts, extra_env={"FERRY_FAILPOINTS": point})   # dies mid-recovery
    a.cleanup_dead_mount()
    a.mount(url, VOL, options=opts)
    for name, data in acked.items():
        assert (a.mountpoint / name).read_bytes() == data, name
    a.umount()
    b = new_mount("b")
    b.mount(url, VOL)
    assert {p.name for p in b.mountpoint.iterdir()} == set(acked)
    b.umount()
    fsck_clean(url, VOL)


def test_local_batches_of_a_host_that_was_taken_over_are_dropped_not_applied(proxied_store_url, new_mount):
    """Host A acknowledges locally, dies with the store out of reach; host B
    takes over (A's unuploaded batches are lost: that is what durability=local
    allows for a lost host) and writes. When A's cache dir mounts again, its
    stale batches must be dropped loudly, never laid over B's newer state."""
    url, proxy = proxied_store_url
    a = new_mount("a")
    a.mkfs(url, VOL)
    a.mount(url, VOL, options=["durability=local", "commit_interval=0.5"])
    write_fsync(a.mountpoint / "shared", b"uploaded by A")
    a.umount()
    a.mount(url, VOL, options=["durability=local", "commit_interval=0.5"])
    proxy.cut()
    write_fsync(a.mountpoint / "shared", b"A, local only")
    write_fsync(a.mountpoint / "a-only", b"A, local only")
    a.kill9()
    proxy.restore()
    b = new_mount("b")
    b.mount(url, VOL, takeover=True)
    assert (b.mountpoint / "shared").read_bytes() == b"uploaded by A"
    write_fsync(b.mountpoint / "shared", b"B wrote this later")
    b.umount()
    a.mount(url, VOL)
    assert "dropping" in a.log() and "locally acknowledged" in a.log()
    assert (a.mountpoint / "shared").read_bytes() == b"B wrote this later"
    assert not (a.mountpoint / "a-only").exists()
    a.umount()
    fsck_clean(url, VOL)


@pytest.mark.parametrize("durability", ["remote", "local"])
def test_full_cache_disk_never_takes_the_mount_down(file_store_url, new_mount, tiny_tmpfs, durability):
    """Issue 7: with the cache disk full, the status writer died with ENOSPC
    and the mount vanished under its writer. Every file ferry writes there
    (status, local journal, block cache, working copy) must fail soft: the
    mount stays up, fsync still means durable, and nothing is lost."""
    cache = tiny_tmpfs("4m")
    a = new_mount("a")
    a.cache_dir = cache / "c"
    a.mkfs(file_store_url, VOL)
    a.mount(file_store_url, VOL, options=[f"durability={durability}"])
    filler = cache / "filler"
    with open(filler, "wb") as f:           # fill the disk to the last byte
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    payloads = {f"f{i}": os.urandom(300_000 + i) for i in range(8)}
    for name, data in payloads.items():
        write_fsync(a.mountpoint / name, data)
    (a.mountpoint / "dir").mkdir()
    fd = os.open(a.mountpoint / "dir", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    import time
    time.sleep(2.5)                         # the status writer runs every second
    assert a.running, f"the daemon died on a full cache disk:\n{a.log()[-3000:]}"
    assert "cannot write the status file" in a.log()
    for name, data in payloads.items():
        assert (a.mountpoint / name).read_bytes() == data
    a.kill9()                               # host lost: only what fsync acknowledged counts
    filler.unlink()
    b = new_mount("b")
    b.mount(file_store_url, VOL, takeover=True)
    for name, data in payloads.items():
        assert (b.mountpoint / name).read_bytes() == data
    assert (b.mountpoint / "dir").is_dir()
    b.umount()
    fsck_clean(file_store_url, VOL)


_FSYNC_CHILD = """
import errno, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, b"after the bug")
try:
    os.fsync(fd)
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
    sys.exit(0)
print("ok")
"""


def _status(m) -> dict:
    try:
        return json.loads((m.cache_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}                            # not written yet (the daemon writes it every second)


@pytest.mark.parametrize("durability", ["remote", "local"])
def test_a_bug_in_the_commit_fails_fsync_with_eio_and_does_not_hang(file_store_url, new_mount, durability):
    """Anything but a store error inside a commit round is a bug: it must not be
    retried forever (fsync and unmount would hang). The round fails, fsync
    returns EIO, the mount turns read-only, unmount completes, and the next
    mount of the same cache dir has everything fsync acknowledged before."""
    a = new_mount("a")
    a.mkfs(file_store_url, VOL)
    opts = [f"durability={durability}", "commit_interval=30"]
    # the first commit round (the first fsync) works, the second meets the bug
    a.mount(file_store_url, VOL, options=opts, extra_env={"FERRY_FAILPOINT_BUGS": "segment_put:2"})
    write_fsync(a.mountpoint / "before", b"acknowledged")
    if durability == "local":
        # the uploader gathers batches: let the first one reach the store alone
        deadline = time.monotonic() + 30
        while _status(a).get("commits", 0) < 1:
            assert time.monotonic() < deadline, "the first batch was never uploaded"
            time.sleep(0.05)
    child = subprocess.Popen([sys.executable, "-c", _FSYNC_CHILD, str(a.mountpoint / "after")],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        log = a.log()[-3000:]
        a.kill9()                      # aborts the FUSE connection: the stuck fsync returns, the child exits
        child.kill()
        child.communicate()
        pytest.fail(f"fsync hung after an unexpected error in the commit:\n{log}")
    if durability == "remote":
        assert out.strip() == "EIO", out
        with pytest.raises(OSError) as e:
            (a.mountpoint / "later").write_bytes(b"x")
        assert e.value.errno in (errno.EROFS, errno.EIO)
    else:
        # local durability acknowledges from the local journal before the upload
        # round, which follows within the uploader's gathering wait
        assert out.strip() in ("ok", "EIO"), out
        deadline = time.monotonic() + 30
        while "read-only" not in a.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "injected bug" in a.log() and "read-only" in a.log(), a.log()[-3000:]
    r = a.umount(expect_failure=True, timeout=60)           # completes, and says the mount had failed
    assert "fenced" in r.stderr and not a.running, r.stdout + r.stderr
    a.mount(file_store_url, VOL, options=opts)
    assert (a.mountpoint / "before").read_bytes() == b"acknowledged"
    if durability == "local" and out.strip() == "ok":
        assert (a.mountpoint / "after").read_bytes() == b"after the bug"   # recovered from the local journal
    a.umount()
    fsck_clean(file_store_url, VOL)
