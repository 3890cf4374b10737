"""Export and import (issue 9): `ferry fs export` streams a pax tar from the
store (no mount), `ferry fs import` makes a volume from a tar. Round trips
through real mounts on both stores, tars made by GNU tar and by busybox tar
(Docker's backup recipe), broken tars, kill -9 in the middle."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from fsd.store import open_store
from fsd.volume import creating
from fsd.volume import objects as vol_mod
from tests.helpers.mount import fsck_clean, run_ferry, snapshot_diff, tree_snapshot, write_fsync

SPARSE = 5 << 30                 # 5 GiB, a few KiB of it data


def ferry_ok(*args: str, env: dict | None = None) -> str:
    r = run_ferry(*args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def make_tree(root: Path) -> None:
    """Every kind of thing a tar must carry."""
    (root / "t").mkdir()
    t = root / "t"
    (t / "dir" / "sub").mkdir(parents=True)
    (t / "emptydir").mkdir()
    write_fsync(t / "dir" / "big", os.urandom(2_500_000))
    for i in range(40):
        (t / "dir" / "sub" / f"small-{i}").write_bytes(os.urandom(i * 37))
    (t / "naïve ünïcode").write_bytes(b"utf-8 names")
    long = "n" * 120
    (t / "dir" / long).write_bytes(b"a name longer than ustar's 100 bytes")
    os.link(t / "dir" / "big", t / "hardlink-to-big")
    os.symlink("dir/big", t / "symlink")
    os.symlink("/nowhere/at/all", t / "dangling")
    os.mkfifo(t / "fifo")
    os.mknod(t / "null", 0o640 | stat.S_IFCHR, os.makedev(1, 3))
    (t / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(t / "setuid", 0o4755)
    os.chown(t / "dir", 1234, 5678)
    os.setxattr(t / "dir" / "big", "user.binary", b"\x00\xff\x01")
    os.setxattr(t / "dir", "user.on-a-dir", b"yes")
    with open(t / "holes-inside", "wb") as f:
        f.write(b"head")
        f.seek(3 << 20)
        f.write(b"middle")
        f.truncate(7 << 20)
    os.utime(t / "dir" / "big", ns=(1_600_000_000_123_456_789, 1_600_000_001_987_654_321))
    with open(root / "sparse", "wb") as f:
        f.seek(1 << 30)
        f.write(b"one GiB in")
        f.seek(SPARSE - 3)
        f.write(b"end")
    for d in (t / "dir" / "sub", t / "dir", t):          # directory times last
        os.utime(d, ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_002))


def check_sparse(path: Path) -> None:
    assert path.stat().st_size == SPARSE
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 10, 1 << 30) == b"one GiB in"
        assert os.pread(f.fileno(), 3, SPARSE - 3) == b"end"
        assert os.pread(f.fileno(), 4096, 2 << 30) == bytes(4096)


def test_export_import_round_trip_keeps_everything(store_url, new_mount, tmp_path):
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(store_url, "src")
    a.mount(store_url, "src")
    make_tree(a.mountpoint)
    os.sync()
    expected = tree_snapshot(a.mountpoint / "t", times=True)
    a.umount()
    tar = tmp_path / "src.tar"
    r = run_ferry("fs", "export", "--store", store_url, "src", "-o", str(tar))
    assert r.returncode == 0, r.stderr
    assert "holes not written" in r.stderr
    # The 5 GiB sparse file costs its data only: holes are neither read nor written.
    assert tar.stat().st_size < 8 << 20, tar.stat().st_size
    listing = subprocess.run(["tar", "-tvf", str(tar)], capture_output=True, text=True).stdout
    assert "hardlink-to-big link to" in listing and "symlink -> dir/big" in listing
    assert "no snapshots" in ferry_ok("fs", "snapshot", "ls", "--store", store_url, "src")   # temporary one gone

    out = ferry_ok("fs", "import", "--store", store_url, "copy", str(tar))
    assert "imported volume copy" in out
    fsck_clean(store_url, "copy")
    b.mount(store_url, "copy")
    got = tree_snapshot(b.mountpoint / "t", times=True)
    assert snapshot_diff(expected, got) == []
    check_sparse(b.mountpoint / "sparse")
    assert os.stat(b.mountpoint / "t" / "dir" / "big").st_atime_ns == 1_600_000_000_123_456_789
    b.umount()


def test_export_reads_a_snapshot_or_a_moment_while_the_volume_is_in_use(file_store_url, new_mount, tmp_path):
    from fsd.backup.history import format_ns
    a = new_mount("a")
    a.mkfs(file_store_url, "src")
    a.mount(file_store_url, "src")
    write_fsync(a.mountpoint / "f", b"version 1")
    ferry_ok("fs", "snapshot", "create", "--store", file_store_url, "src", "s1",
             env={"FERRY_RUN_DIR": str(a.run_dir)})
    moment = time.time_ns() + 1_000_000
    time.sleep(0.2)
    write_fsync(a.mountpoint / "f", b"version 2")
    for spec, want in [("src@s1", b"version 1"), (f"src@{format_ns(moment)}", b"version 1"), ("src", b"version 2")]:
        tar = tmp_path / "x.tar"
        r = run_ferry("fs", "export", "--store", file_store_url, spec, "-o", str(tar))
        assert r.returncode == 0, r.stderr
        x = tmp_path / "x"
        shutil.rmtree(x, ignore_errors=True)
        x.mkdir()
        subprocess.run(["tar", "-xf", str(tar), "-C", str(x)], check=True)
        assert (x / "f").read_bytes() == want, spec
    a.umount()


def _local_tree(root: Path) -> None:
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "file").write_bytes(os.urandom(1_500_000))
    (root / "data" / "sub" / "small").write_bytes(b"small")
    os.symlink("file", root / "data" / "link")
    os.link(root / "data" / "file", root / "data" / "hard")
    os.setxattr(root / "data" / "file", "user.k", b"value")
    os.utime(root / "data" / "file", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))


def _compare(local: Path, mounted: Path, *, ns: bool, xattrs: bool) -> None:
    want, got = tree_snapshot(local), tree_snapshot(mounted)
    if not xattrs:
        for d in (want, got):
            for e in d.values():
                e.pop("xattrs", None)
    assert snapshot_diff(want, got) == []
    f_local, f_got = os.stat(local / "file"), os.stat(mounted / "file")
    if ns:
        assert f_got.st_mtime_ns == f_local.st_mtime_ns
    else:
        assert f_got.st_mtime_ns == f_local.st_mtime_ns // 10**9 * 10**9


@pytest.mark.parametrize("maker", ["gnu", "gnu-pax", "busybox"])
def test_import_of_tars_made_by_other_tools(file_store_url, new_mount, tmp_path, maker):
    src = tmp_path / "src"
    _local_tree(src)
    tar = tmp_path / "backup.tar"
    if maker == "busybox":
        # Docker's recipe: docker run --volumes-from db -v $(pwd):/backup busybox tar cvf /backup/backup.tar /data
        cmd = ["busybox", "tar", "cvf", str(tar), "-C", str(src), "data"]
    elif maker == "gnu":
        cmd = ["tar", "--xattrs", "-cpf", str(tar), "-C", str(src), "data"]
    else:
        cmd = ["tar", "--format=pax", "--xattrs", "-cpf", str(tar), "-C", str(src), "data"]
    subprocess.run(cmd, check=True, capture_output=True)
    ferry_ok("fs", "import", "--store", file_store_url, "restored", str(tar), "--strip-components", "1")
    fsck_clean(file_store_url, "restored")
    m = new_mount("m")
    m.mount(file_store_url, "restored")
    # GNU tar adds pax records (ns times) as soon as --xattrs asks for them; busybox writes plain ustar.
    _compare(src / "data", m.mountpoint, ns=maker != "busybox", xattrs=maker != "busybox")
    m.umount()


def _no_volume(store_url: str, name: str) -> None:
    store = open_store(store_url)
    try:
        assert vol_mod.find_volume(store, name) is None
        assert list(store.list(name + "/")) == []
        assert list(store.list(creating.PREFIX)) == []
    finally:
        store.close()


def test_a_truncated_or_corrupt_tar_creates_nothing(store_url, tmp_path):
    src = tmp_path / "src"
    _local_tree(src)
    tar = tmp_path / "ok.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(src), "data"], check=True)
    data = tar.read_bytes()
    import tarfile
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    boundary = members[-1].offset
    file_member = next(m for m in members if m.name == "data/file")
    corrupt = bytearray(data)
    corrupt[boundary + 100:boundary + 140] = b"\xff" * 40
    cases = {"mid-file": data[:file_member.offset_data + 700_000], "at-a-member": data[:boundary],
             "corrupt-header": bytes(corrupt), "not-a-tar": b"hello" * 1000}
    for label, blob in cases.items():
        bad = tmp_path / f"{label}.tar"
        bad.write_bytes(blob)
        r = run_ferry("fs", "import", "--store", store_url, "v", str(bad))
        assert r.returncode == 1, (label, r.stdout, r.stderr)
        assert ("truncated" in r.stderr or "corrupt" in r.stderr) and "nothing was created" in r.stderr, r.stderr
        _no_volume(store_url, "v")
    ferry_ok("fs", "import", "--store", store_url, "v", str(tar))           # the whole tar still imports


def test_kill9_during_import_leaves_nothing_visible_and_gc_cleans_it(file_store_url, new_mount, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(6):
        (src / "d" / f"f{i}").write_bytes(os.urandom(1_200_000))
    tar = tmp_path / "x.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(src), "d"], check=True)
    r = run_ferry("fs", "import", "--store", file_store_url, "v", str(tar),
                  env={"FERRY_FAILPOINTS": "import_after_upload:4"})
    assert r.returncode == -signal.SIGKILL
    store = open_store(file_store_url)
    try:
        assert vol_mod.find_volume(store, "v") is None
        assert list(store.list("v/"))                          # uploads of the dead import are there
        [marker] = list(store.list(creating.PREFIX))
    finally:
        store.close()
    ferry_ok("fs", "mkfs", "--store", file_store_url, "other")
    ferry_ok("fs", "gc", "--store", file_store_url, "other")   # too young: the import may still be running
    store = open_store(file_store_url)
    try:
        assert list(store.list("v/"))
    finally:
        store.close()
    # An hour later: its creator never touched the marker again.
    path = Path(file_store_url[len("file://"):]) / marker
    old = time.time() - 3600
    os.utime(path, (old, old))
    ferry_ok("fs", "gc", "--store", file_store_url, "other")
    _no_volume(file_store_url, "v")
    ferry_ok("fs", "import", "--store", file_store_url, "v", str(tar))


def test_a_path_thousands_of_levels_deep_imports_without_recursion(file_store_url, tmp_path, new_mount):
    """A tar whose member sits 1,900 directories deep (its parents omitted, as
    some tools write them): imported, every parent made, no RecursionError."""
    import io
    import tarfile
    deep = "/".join(["d"] * 1900) + "/f"
    tar = tmp_path / "deep.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(deep)
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    r = run_ferry("fs", "import", "--store", file_store_url, "deep", str(tar))
    assert r.returncode == 0, r.stderr
    m = new_mount("deep")
    m.mount(file_store_url, "deep")
    fd = os.open(m.mountpoint, os.O_RDONLY)
    try:
        for _ in range(1900):                  # walk down relative to each level (PATH_MAX is 4096)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        with os.fdopen(os.open("f", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"hi"
    finally:
        os.close(fd)
    m.umount()
