"""Block volumes (`-o layout=block`): ext4 or XFS on a loop device over a
ferry image, mounted by `ferry fs mount` with everything ferry promises.

Real parts: the ferry daemon, the kernel's loop driver (buffered, and with direct I/O),
mkfs/mount of a real ext4 and XFS, moto_server or the file:// store. The
kernel filesystem is checked with e2fsck/xfs_repair through a second,
read-only loop device while it is frozen (consistent on disk).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.fsync_writer import Model, acked_model
from tests.helpers.mount import FerryMount, fsck_clean, is_mounted, run_ferry, snapshot_diff, tree_snapshot

SIZES = {"ext4": "512M", "xfs": "320M"}


def check_kernel_fs(m: FerryMount, fs: str) -> None:
    """Unmount the volume cleanly, mount ferry's layer alone (`-o image_only=on`)
    and check the image read-only with e2fsck or xfs_repair, then unmount
    again. (A frozen XFS still has log items e2fsck-like checkers ignore.)"""
    store_url, volume, target = m.store_url, m.volume, m.mountpoint
    m.umount()
    m.mount(store_url, volume, options=["image_only=on"])
    dev = subprocess.run(["losetup", "--find", "--show", "--read-only", str(m.mountpoint / "image")],
                         check=True, capture_output=True, text=True).stdout.strip()
    try:
        argv = ["e2fsck", "-fn", dev] if fs == "ext4" else ["xfs_repair", "-n", dev]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(argv)} exit {r.returncode}:\n{r.stdout}{r.stderr}"
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    m.umount()
    assert m.mountpoint == target


def make_tree(root: Path) -> None:
    rng = random.Random(7)
    (root / "dir" / "sub").mkdir(parents=True)
    for i in range(40):
        (root / "dir" / f"small{i}").write_bytes(rng.randbytes(rng.randrange(0, 9000)))
    (root / "dir" / "sub" / "big").write_bytes(rng.randbytes(3_000_000))
    os.symlink("dir/small1", root / "link")
    os.link(root / "dir" / "small2", root / "hard")
    os.setxattr(root / "dir" / "small3", "user.k", b"v")
    os.chmod(root / "dir" / "small4", 0o600)
    subprocess.run(["sync", "-f", str(root)], check=True)


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_block_volume_mounts_on_another_host_with_its_files(fs, s3_store_url, new_mount):
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(s3_store_url, "blk", [f"layout=block,fs={fs},size={SIZES[fs]}"])
    a.mount(s3_store_url, "blk", fstype=fs)
    assert is_mounted(a.fuse_mountpoint, "fuse.ferry")
    make_tree(a.mountpoint)
    want = tree_snapshot(a.mountpoint, times=True)
    a.umount()
    assert not is_mounted(a.fuse_mountpoint) and not is_mounted(a.mountpoint)
    assert subprocess.run(["losetup", "-j", str(a.fuse_mountpoint / "image")], capture_output=True,
                          text=True).stdout == ""
    r = run_ferry("fs", "inspect", "--store", s3_store_url, "blk")
    assert f"block ({fs} on a" in r.stdout and "format                 5" in r.stdout, r.stdout

    b.mount(s3_store_url, "blk", fstype=fs)      # a new host: empty cache, no --takeover needed
    assert snapshot_diff(want, tree_snapshot(b.mountpoint, times=True)) == []
    check_kernel_fs(b, fs)
    b.mount(s3_store_url, "blk", fstype=fs)
    # A plain umount of the kernel filesystem is a clean stop too: the daemon
    # detaches the image and releases the volume.
    subprocess.run(["umount", str(b.mountpoint)], check=True)
    assert b.wait_dead(timeout=60) == 0, b.log()
    assert not is_mounted(b.fuse_mountpoint)
    fsck_clean(s3_store_url, "blk")


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_block_volume_grows_online_and_keeps_its_size(fs, file_store_url, new_mount):
    """`ferry fs resize` grows a mounted block volume while a file is open
    in it: the kernel filesystem can then hold more than the old size, a
    mount on another host has the new size and the data, the image checks
    clean. Shrinking, a files volume and an unmounted path are refused."""
    a, b = new_mount("a"), new_mount("b")

    def resize(m, size):
        return run_ferry("fs", "resize", str(m.mountpoint), size, env={"FERRY_RUN_DIR": str(m.run_dir)})
    a.mkfs(file_store_url, "grow", [f"layout=block,fs={fs},size={SIZES[fs]}"])
    a.mount(file_store_url, "grow", fstype=fs)
    keep = os.urandom(3 << 20)
    (a.mountpoint / "keep").write_bytes(keep)
    before = os.statvfs(a.mountpoint)
    old_bytes = before.f_blocks * before.f_frsize
    with open(a.mountpoint / "open-during-resize", "wb") as f:
        f.write(b"x" * 4096)
        r = resize(a, "1G")
        assert r.returncode == 0, r.stdout + r.stderr
        f.write(b"y" * 4096)
    online = "now uses it" in r.stdout
    # The daemon's status (what the agent's Docker Get shows as `size`) follows the image.
    deadline = time.monotonic() + 5
    while json.loads((a.cache_dir / "status.json").read_text()).get("image_size") != 1 << 30:
        assert time.monotonic() < deadline, (a.cache_dir / "status.json").read_text()
        time.sleep(0.1)
    if not online:
        # ext4 grows online only with CAP_SYS_RESOURCE; then it grows at the next mount.
        assert fs == "ext4" and "at the next mount" in r.stdout, r.stdout
        assert os.statvfs(a.mountpoint).f_blocks == before.f_blocks
        a.umount()
        a.mount(file_store_url, "grow", fstype=fs)
        assert "checking and growing it before mounting" in a.log()
    after = os.statvfs(a.mountpoint)
    assert after.f_blocks * after.f_frsize > 1.6 * old_bytes, (old_bytes, after)
    # More than the old size fits now (fallocate: real allocation, no data to write).
    big = a.mountpoint / "big"
    fd = os.open(big, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, old_bytes + (64 << 20))
        os.fsync(fd)
    finally:
        os.close(fd)
    r = resize(a, "600M")
    assert r.returncode == 1 and "can only grow" in r.stderr, r.stdout + r.stderr
    r = resize(a, "1G")          # the same size again: harmless
    assert r.returncode == 0, r.stdout + r.stderr
    a.umount()
    r = resize(a, "2G")
    assert r.returncode == 1 and "mount the volume, then resize it" in r.stderr, r.stdout + r.stderr

    b.mount(file_store_url, "grow", fstype=fs)              # another host: the size is the volume's
    st = os.statvfs(b.mountpoint)
    assert st.f_blocks * st.f_frsize > 1.6 * old_bytes
    assert (b.mountpoint / "keep").read_bytes() == keep
    assert (b.mountpoint / "open-during-resize").read_bytes() == b"x" * 4096 + b"y" * 4096
    assert (b.mountpoint / "big").stat().st_size == old_bytes + (64 << 20)
    check_kernel_fs(b, fs)
    fsck_clean(file_store_url, "grow")

    b.mkfs(file_store_url, "plain")
    b.mount(file_store_url, "plain")
    r = resize(b, "2G")
    assert r.returncode == 1 and "layout=files volume" in r.stderr, r.stdout + r.stderr
    b.umount()


def test_block_options_are_checked_before_anything_is_made(file_store_url):
    cases = {
        ("layout=disk",): "layout must be 'files' or 'block'",
        ("layout=block", "fs=btrfs"): "fs must be 'ext4' or 'xfs'",
        ("layout=block", "size=1M"): "size must be between 64M and 1P",
        ("layout=block", "fs=xfs", "size=100M"): "at least 300M for xfs",
        ("size=1G",): "a layout=files volume's size is a mount option",
        ("fs=xfs",): "fs applies only to layout=block volumes",
    }
    for opts, message in cases.items():
        args = ["fs", "mkfs", "--store", file_store_url, "bad"]
        for o in opts:
            args += ["-o", o]
        r = run_ferry(*args)
        assert r.returncode != 0 and message in r.stderr, (opts, r.stdout, r.stderr)
    r = run_ferry("fs", "inspect", "--store", file_store_url, "bad")
    assert r.returncode != 0
    tar = Path(file_store_url[len("file://"):]).parent / "one.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", "/etc", "hostname"], check=True)
    r = run_ferry("fs", "import", "--store", file_store_url, "bad", str(tar), "-o", "layout=block")
    assert r.returncode != 0 and "import makes layout=files volumes only" in r.stderr, r.stdout + r.stderr


def _writer(root: Path, log: Path, seed: int) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "tests.helpers.fsync_writer", str(root), str(log), str(seed)],
                            cwd=str(Path(__file__).resolve().parents[1]), stderr=subprocess.PIPE)


TORTURE = [  # (fs, durability, store, loop): remote fsyncs survive the host; local ones the daemon
    ("ext4", "remote", "s3", "buffered"),
    ("xfs", "remote", "file", "buffered"),
    ("ext4", "local", "file", "buffered"),
    ("ext4", "remote", "file", "direct"),      # -o loop_direct_io=on
]


def _torture(fs: str, durability: str, store_url: str, tmp_path: Path, trials: int, seed: int,
             loop: str = "buffered") -> None:
    rng = random.Random(seed)
    opts = [f"durability={durability}", "discard=on", f"loop_direct_io={'on' if loop == 'direct' else 'off'}"]
    models: list[tuple[Path, Model]] = []
    m = FerryMount(tmp_path / "host", tmp_path / "mnt", tmp_path / "cache-0")
    with m:
        m.mkfs(store_url, "tort", [f"layout=block,fs={fs},size={SIZES[fs]}"])
        for trial in range(trials):
            # remote: every trial is a new host (fresh cache, takeover); local: the same host
            cache = tmp_path / (f"cache-{trial}" if durability == "remote" else "cache-0")
            m.mount(store_url, "tort", cache_dir=cache, takeover=trial > 0 and durability == "remote",
                    options=opts, fstype=fs)
            for root, model in models:
                problems = model.check(m.mountpoint / root)
                assert not problems, f"trial {trial} (seed {seed}): acknowledged data lost:\n" + "\n".join(
                    problems[:20]) + f"\n{m.log()[-3000:]}"
            check_kernel_fs(m, fs)
            m.mount(store_url, "tort", options=opts, fstype=fs)
            log = tmp_path / f"writer-{trial}.log"
            w = _writer(m.mountpoint / f"t{trial}", log, rng.randrange(1 << 30))
            time.sleep(rng.uniform(0.3, 2.5))
            os.killpg(m.proc.pid, signal.SIGKILL)   # the daemon dies first: what the writer logged is all
            m.proc.wait()
            w.kill()
            w.wait()
            m.kill9()                   # detach the dead stack
            model = acked_model(log)
            models.append((Path(f"t{trial}"), model))
        m.mount(store_url, "tort", cache_dir=tmp_path / f"cache-{trials}" if durability == "remote" else None,
                takeover=durability == "remote", fstype=fs)
        for root, model in models:
            assert not model.check(m.mountpoint / root), f"seed {seed}: acknowledged data lost at the end"
        check_kernel_fs(m, fs)
        assert sum(md.acks for _, md in models) > 0, "the writer never got an fsync through: nothing was tested"
    fsck_clean(store_url, "tort")


@pytest.mark.parametrize("fs,durability,store,loop", TORTURE, ids=["-".join(t) for t in TORTURE])
def test_block_volume_keeps_every_fsync_through_kill9(fs, durability, store, loop, request, tmp_path):
    """kill -9 of the daemon at a random moment while a writer fsyncs in the
    kernel filesystem; then mount on a new host (remote) or the same one
    (local): every acknowledged file is there, the kernel filesystem is clean."""
    store_url = request.getfixturevalue(f"{store}_store_url")
    seed = int(os.environ.get("FERRY_TORTURE_SEED", random.randrange(1 << 30)))
    _torture(fs, durability, store_url, tmp_path, int(os.environ.get("FERRY_BLOCK_TRIALS", "3")), seed, loop)


@pytest.mark.slow
@pytest.mark.parametrize("fs,durability,store,loop", TORTURE, ids=["-".join(t) for t in TORTURE])
def test_block_volume_keeps_every_fsync_through_kill9_long(fs, durability, store, loop, request, tmp_path):
    store_url = request.getfixturevalue(f"{store}_store_url")
    seed = int(os.environ.get("FERRY_TORTURE_SEED", random.randrange(1 << 30)))
    _torture(fs, durability, store_url, tmp_path, int(os.environ.get("FERRY_BLOCK_SLOW_TRIALS", "25")), seed,
             loop)


def test_frozen_stale_owner_of_a_block_volume_cannot_commit(s3_store_url, new_mount):
    """SIGSTOP the owner, take the volume over on another host and write
    there; when the old owner wakes, its writes fail (its fsync returns an
    error, its kernel filesystem goes read-only) and the new owner's data
    stands."""
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(s3_store_url, "stale", ["layout=block,size=256M"])
    a.mount(s3_store_url, "stale", fstype="ext4")
    (a.mountpoint / "before").write_bytes(b"a1")
    subprocess.run(["sync", "-f", str(a.mountpoint)], check=True)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        b.mount(s3_store_url, "stale", takeover=True, fstype="ext4")
        (b.mountpoint / "after").write_bytes(b"b1")
        subprocess.run(["sync", "-f", str(b.mountpoint)], check=True)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    stale = a.mountpoint / "stale-write"
    failed = False
    try:
        with open(stale, "wb") as f:
            f.write(b"x" * 100_000)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        failed = True
    assert failed, "the stale owner's fsync succeeded after a takeover"
    b.umount()
    a.cleanup()
    c = new_mount("c")
    c.mount(s3_store_url, "stale", fstype="ext4")
    assert sorted(p.name for p in c.mountpoint.iterdir() if p.name != "lost+found") == ["after", "before"]
    assert (c.mountpoint / "after").read_bytes() == b"b1"
    check_kernel_fs(c, "ext4")


def test_snapshot_of_a_mounted_block_volume_clones_clean_and_independent(file_store_url, new_mount):
    """`ferry fs snapshot create` freezes the kernel filesystem around the
    commit: a clone of that snapshot mounts with exactly the files of that
    moment and a clean image, shares the origin's data, and neither volume
    sees the other's later writes."""
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(file_store_url, "orig", ["layout=block,size=256M"])
    a.mount(file_store_url, "orig", fstype="ext4")
    make_tree(a.mountpoint)
    (a.mountpoint / "unsynced").write_bytes(b"in the page cache only")   # the freeze writes it too
    want = tree_snapshot(a.mountpoint)
    r = run_ferry("fs", "snapshot", "create", "--store", file_store_url, "orig", "s1",
                  env={"FERRY_RUN_DIR": str(a.run_dir)})
    assert r.returncode == 0, r.stdout + r.stderr
    (a.mountpoint / "after-snapshot").write_bytes(b"later")
    (a.mountpoint / "dir" / "small5").unlink()
    r = run_ferry("fs", "mkfs", "--store", file_store_url, "copy", "--from", "orig@s1")
    assert r.returncode == 0, r.stdout + r.stderr
    b.mount(file_store_url, "copy", fstype="ext4")
    assert snapshot_diff(want, tree_snapshot(b.mountpoint)) == []
    (b.mountpoint / "only-in-clone").write_bytes(b"c")
    subprocess.run(["sync", "-f", str(b.mountpoint)], check=True)
    assert not (a.mountpoint / "only-in-clone").exists()
    check_kernel_fs(b, "ext4")
    b.mount(file_store_url, "copy", fstype="ext4")
    assert (b.mountpoint / "only-in-clone").read_bytes() == b"c"
    assert not (b.mountpoint / "after-snapshot").exists()
    b.umount()
    a.umount()
    a.mount(file_store_url, "orig", fstype="ext4")
    assert (a.mountpoint / "after-snapshot").exists() and not (a.mountpoint / "only-in-clone").exists()
    a.umount()
    fsck_clean(file_store_url, "orig")
    fsck_clean(file_store_url, "copy")


def _live_bytes(store_url: str, volume: str, *, dry_run: bool = False) -> int:
    r = run_ferry("fs", "gc", "--store", store_url, volume, "--grace", "0", "--json",
                  *(["--dry-run"] if dry_run else []))
    assert r.returncode == 0, r.stdout + r.stderr
    import json
    return json.loads(r.stdout)["live_bytes"]


DISCARD = [("ext4", "fstrim"), ("ext4", "discard"), ("xfs", "trim_interval")]


@pytest.mark.parametrize("fs,how", DISCARD, ids=["-".join(d) for d in DISCARD])
def test_block_discard_lets_gc_free_the_store(fs, how, file_store_url, new_mount):
    """Deleting files in the kernel filesystem frees the store once the
    discards arrive (fstrim by hand, -o discard, or the daemon's periodic
    fstrim): the image gets holes, GC deletes their objects, and both the
    volume and the kernel filesystem check clean."""
    from fsd.block.stack import fallocate_supported
    assert fallocate_supported(), "pyfuse3 without fallocate: run deploy/pyfuse3/install.sh (scripts/install.sh does)"
    m = new_mount("a")
    m.mkfs(file_store_url, "trim", [f"layout=block,fs={fs},size={SIZES[fs]},history=0"])
    opts = {"fstrim": [], "discard": ["discard=on"], "trim_interval": ["trim_interval=1s"]}[how]
    m.mount(file_store_url, "trim", options=["gc=off", *opts], fstype=fs)
    keep = random.Random(3).randbytes(2_000_000)
    (m.mountpoint / "keep").write_bytes(keep)
    for i in range(3):
        (m.mountpoint / f"gone{i}").write_bytes(random.Random(i).randbytes(16 << 20))
    subprocess.run(["sync", "-f", str(m.mountpoint)], check=True)
    full = _live_bytes(file_store_url, "trim", dry_run=True)     # mounted: look, delete nothing
    assert full > 48 << 20
    for i in range(3):
        (m.mountpoint / f"gone{i}").unlink()
    subprocess.run(["sync", "-f", str(m.mountpoint)], check=True)
    if how == "fstrim":
        subprocess.run(["fstrim", str(m.mountpoint)], check=True)
    elif how == "trim_interval":
        time.sleep(3)
    subprocess.run(["sync", "-f", str(m.mountpoint)], check=True)
    m.umount()
    after = _live_bytes(file_store_url, "trim")
    assert after < full - (40 << 20), f"live bytes {full} -> {after}: the discards did not free the store"
    m.mount(file_store_url, "trim", fstype=fs)
    assert (m.mountpoint / "keep").read_bytes() == keep
    check_kernel_fs(m, fs)
    fsck_clean(file_store_url, "trim")


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_block_export_holds_the_files_inside_the_image(fs, file_store_url, new_mount, tmp_path):
    """`ferry fs export` of a block volume is a tar of its files (not the
    image), from a snapshot or as last committed while mounted; tar
    extracts it to the same tree."""
    m = new_mount("a")
    m.mkfs(file_store_url, "exp", [f"layout=block,fs={fs},size={SIZES[fs]}"])
    m.mount(file_store_url, "exp", fstype=fs)
    make_tree(m.mountpoint)
    with open(m.mountpoint / "sparse", "wb") as f:
        f.truncate(50 << 20)
        f.seek(20 << 20)
        f.write(b"middle")
    want = {k: v for k, v in tree_snapshot(m.mountpoint).items() if not k.startswith("lost+found")}
    r = run_ferry("fs", "snapshot", "create", "--store", file_store_url, "exp", "s1",
                  env={"FERRY_RUN_DIR": str(m.run_dir)})
    assert r.returncode == 0, r.stdout + r.stderr
    (m.mountpoint / "later").write_bytes(b"after the snapshot")
    subprocess.run(["sync", "-f", str(m.mountpoint)], check=True)
    for spec, expect_later in (("exp@s1", False), ("exp", True)):
        tar = tmp_path / f"{spec}.tar"
        r = run_ferry("fs", "export", "--store", file_store_url, spec, "-o", str(tar))
        assert r.returncode == 0, r.stdout + r.stderr
        out = tmp_path / f"x-{spec}"
        out.mkdir()
        subprocess.run(["tar", "-xpf", str(tar), "--xattrs", "--xattrs-include=*", "-C", str(out)], check=True)
        got = tree_snapshot(out)
        assert ("later" in got) == expect_later
        got.pop("later", None)
        assert snapshot_diff(want, got) == []
        assert os.stat(out / "sparse").st_blocks * 512 < 1 << 20, "the hole was written out"
        assert os.stat(out / "dir" / "small1").st_mtime_ns == os.stat(m.mountpoint / "dir" / "small1").st_mtime_ns
    m.umount()


class MemoryCgroup:
    """A memory-limited cgroup (v2 or v1 memory controller) to move processes into."""

    def __init__(self, name: str, limit: int) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        if v2.exists() and "memory" in v2.read_text():
            self.path = Path("/sys/fs/cgroup") / name
            self.path.mkdir()
            (self.path / "memory.max").write_text(str(limit))
        elif Path("/sys/fs/cgroup/memory").is_dir():
            self.path = Path("/sys/fs/cgroup/memory") / name
            self.path.mkdir()
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
        else:
            pytest.fail("no cgroup memory controller (v1 or v2) on this machine")

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        parent = self.path.parent / "cgroup.procs"
        for pid in (self.path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                parent.write_text(pid)
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def _abort_fuse(mountpoint: Path) -> None:
    """Abort the FUSE connection of `mountpoint`: every request fails, nothing stays blocked."""
    conns = Path("/sys/fs/fuse/connections")
    if not any(conns.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "none", str(conns)], check=False)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if f[4] == str(mountpoint):
            (conns / f[2].split(":")[1] / "abort").write_text("1")


def _io_flusher_allowed() -> bool:
    r = subprocess.run([sys.executable, "-c", "import sys; from fsd.lifecycle.kernel_tuning import set_io_flusher; "
                        "sys.exit(set_io_flusher() is not None)"], cwd=str(Path(__file__).resolve().parents[1]))
    return r.returncode == 0


@pytest.mark.parametrize("daemon_inside", [False, True], ids=["container-limited", "daemon-limited-too"])
def test_block_volume_writes_through_a_memory_limited_cgroup(daemon_inside, file_store_url, new_mount):
    """A writer in a 128 MiB cgroup (a container's memory limit) puts 384
    MiB through ext4: reclaim must write its page cache back through the
    loop device to the daemon. With the daemon in the same cgroup, only its
    PR_SET_IO_FLUSHER keeps its allocations from waiting on that writeback
    (a deadlock otherwise, seen here without the capability). A watchdog
    aborts the FUSE connection after 180 s and fails the test; the data must
    be there after a remount on a new host."""
    if daemon_inside and not _io_flusher_allowed():
        pytest.skip("PR_SET_IO_FLUSHER needs CAP_SYS_RESOURCE, which this machine does not grant; without "
                    "it a daemon inside the writer's memory cgroup deadlocks (docs/block.md)")
    m = new_mount("a")
    m.mkfs(file_store_url, "mem", ["layout=block,size=1G"])
    m.mount(file_store_url, "mem", options=["dirty_limit=32M", "cache_size=64M"], fstype="ext4")
    cg = MemoryCgroup(f"ferry-test-{os.getpid()}", 128 << 20)
    try:
        if daemon_inside:
            cg.add(m.proc.pid)
        writer = subprocess.Popen(["sh", "-c", f"echo $$ > {cg.path}/cgroup.procs && exec dd if=/dev/urandom "
                                   f"of={m.mountpoint}/big bs=1M count=384 conv=fsync status=none"])
        try:
            rc = writer.wait(timeout=180)
        except subprocess.TimeoutExpired:
            _abort_fuse(m.fuse_mountpoint)
            writer.kill()
            writer.wait()
            pytest.fail(f"writeback through the daemon stalled in a memory-limited cgroup:\n{m.log()[-3000:]}")
        assert rc == 0, m.log()[-3000:]
        assert m.running, f"the daemon died (OOM?):\n{m.log()[-3000:]}"
        digest = subprocess.run(["sha256sum", str(m.mountpoint / "big")], capture_output=True, text=True,
                                check=True).stdout.split()[0]
    finally:
        cg.remove()
    m.umount()
    m.mount(file_store_url, "mem", cache_dir=m.workdir / "cache-new", fstype="ext4")
    assert (m.mountpoint / "big").stat().st_size == 384 << 20
    assert subprocess.run(["sha256sum", str(m.mountpoint / "big")], capture_output=True, text=True,
                          check=True).stdout.split()[0] == digest
    m.umount()
