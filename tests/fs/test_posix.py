"""The POSIX surface of SPEC §3, by plain system calls on a real mount, with
persistence across unmount/mount where it matters."""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
import subprocess
import threading

import pytest

from tests.fs.conftest import LOCAL

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(src, dst, flags):
    r = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def test_create_write_read_overwrite(mnt):
    p = mnt / "f"
    p.write_bytes(b"hello world")
    assert p.read_bytes() == b"hello world"
    with open(p, "r+b") as f:
        f.seek(6)
        f.write(b"ferry")
    assert p.read_bytes() == b"hello ferry"
    assert p.stat().st_size == 11


def test_large_sequential_roundtrip_across_blocks(mnt, volume):
    data = os.urandom(5 * 1024 * 1024 + 4097)
    (mnt / "big").write_bytes(data)
    volume.remount(fresh_cache=True)
    assert hashlib.sha256((mnt / "big").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_sparse_and_over_4gib(mnt, volume):
    p = mnt / "sparse"
    with open(p, "wb") as f:
        f.seek(5 * 1024 ** 3)
        f.write(b"tail")
        f.seek(1000)
        f.write(b"head")
    assert p.stat().st_size == 5 * 1024 ** 3 + 4
    volume.remount()
    with open(p, "rb") as f:
        assert f.read(1004)[-4:] == b"head"
        f.seek(3 * 1024 ** 3)
        assert f.read(8192) == bytes(8192)
        f.seek(5 * 1024 ** 3)
        assert f.read() == b"tail"


def test_o_append(mnt):
    p = mnt / "log"
    p.write_bytes(b"a")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"b")
    os.write(fd, b"c")
    os.close(fd)
    assert p.read_bytes() == b"abc"


def test_truncate_down_then_grow_reads_zeros(mnt, volume):
    p = mnt / "t"
    p.write_bytes(b"x" * 3_000_000)
    os.truncate(p, 1_500_000)
    assert p.stat().st_size == 1_500_000
    os.truncate(p, 2_500_000)
    data = p.read_bytes()
    assert data[:1_500_000] == b"x" * 1_500_000 and data[1_500_000:] == bytes(1_000_000)
    volume.remount(fresh_cache=True)
    data = p.read_bytes()
    assert data[:1_500_000] == b"x" * 1_500_000 and data[1_500_000:] == bytes(1_000_000)
    with open(p, "r+b") as f:
        f.truncate(0)
    assert p.read_bytes() == b""


def test_directories(mnt):
    (mnt / "a/b/c").mkdir(parents=True)
    (mnt / "a/b/c/f").write_bytes(b"1")
    assert sorted(os.listdir(mnt / "a/b")) == ["c"]
    assert os.stat(mnt / "a").st_nlink == 3
    with pytest.raises(OSError) as e:
        os.rmdir(mnt / "a/b")
    assert e.value.errno == errno.ENOTEMPTY
    os.unlink(mnt / "a/b/c/f")
    os.rmdir(mnt / "a/b/c")
    assert os.stat(mnt / "a/b").st_nlink == 2


def test_symlinks(mnt, volume):
    (mnt / "target").write_bytes(b"t")
    os.symlink("target", mnt / "link")
    os.symlink("/nonexistent/dangling", mnt / "dangling")
    volume.remount()
    assert os.readlink(mnt / "link") == "target"
    assert (mnt / "link").read_bytes() == b"t"
    assert stat.S_ISLNK(os.lstat(mnt / "dangling").st_mode)
    assert os.readlink(mnt / "dangling") == "/nonexistent/dangling"


def test_hard_links(mnt, volume):
    (mnt / "orig").write_bytes(b"shared")
    os.link(mnt / "orig", mnt / "second")
    assert os.stat(mnt / "orig").st_nlink == 2
    assert os.stat(mnt / "orig").st_ino == os.stat(mnt / "second").st_ino
    with open(mnt / "second", "ab") as f:
        f.write(b"!")
    volume.remount()
    assert (mnt / "orig").read_bytes() == b"shared!"
    os.unlink(mnt / "orig")
    assert os.stat(mnt / "second").st_nlink == 1
    assert (mnt / "second").read_bytes() == b"shared!"


def test_rename_variants(mnt, volume):
    (mnt / "d1").mkdir()
    (mnt / "d2").mkdir()
    (mnt / "d1/f").write_bytes(b"f")
    os.rename(mnt / "d1/f", mnt / "d2/g")                 # across directories
    (mnt / "d2/h").write_bytes(b"h")
    os.rename(mnt / "d2/g", mnt / "d2/h")                 # over an existing file
    assert (mnt / "d2/h").read_bytes() == b"f"
    (mnt / "empty").mkdir()
    os.rename(mnt / "d1", mnt / "empty")                  # dir over an empty dir
    assert not (mnt / "d1").exists() and (mnt / "empty").is_dir()
    volume.remount()
    assert sorted(os.listdir(mnt)) == ["d2", "empty"]
    assert (mnt / "d2/h").read_bytes() == b"f"


def test_rename_noreplace_and_exchange(mnt):
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    try:
        renameat2(mnt / "a", mnt / "b", RENAME_NOREPLACE)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS):
            pytest.skip("renameat2 flags not passed through here")
        assert e.errno == errno.EEXIST
    else:
        pytest.fail("RENAME_NOREPLACE replaced an existing file")
    try:
        renameat2(mnt / "a", mnt / "b", RENAME_EXCHANGE)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.ENOSYS):
            pytest.skip("RENAME_EXCHANGE not passed through here")
        raise
    assert (mnt / "a").read_bytes() == b"B" and (mnt / "b").read_bytes() == b"A"


def test_unlink_open_file_keeps_data_until_close(mnt, volume):
    p = mnt / "tmp"
    p.write_bytes(b"still here")
    fd = os.open(p, os.O_RDWR)
    os.unlink(p)
    assert not p.exists()
    assert os.pread(fd, 100, 0) == b"still here"
    os.pwrite(fd, b"STILL", 0)
    assert os.pread(fd, 100, 0) == b"STILL here"
    os.close(fd)
    volume.remount()
    assert not p.exists()


def test_modes_owners_ns_timestamps(mnt, volume):
    p = mnt / "m"
    p.write_bytes(b"")
    os.chmod(p, 0o640)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    volume.remount()
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns == 1_700_000_000_987_654_321
    assert st.st_atime_ns == 1_600_000_000_123_456_789


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_default_permissions_enforced(mnt):
    p = mnt / "secret"
    p.write_bytes(b"root only")
    os.chmod(p, 0o600)
    os.chmod(mnt, 0o755)
    r = subprocess.run(["python3", "-c", f"open({str(p)!r}).read()"], preexec_fn=lambda: os.setuid(65534),
                       capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr


def test_xattrs(mnt, volume):
    p = mnt / "x"
    p.write_bytes(b"")
    os.setxattr(p, "user.color", b"blue")
    os.setxattr(p, "user.empty", b"")
    volume.remount()
    assert os.getxattr(p, "user.color") == b"blue"
    assert sorted(os.listxattr(p)) == ["user.color", "user.empty"]
    os.removexattr(p, "user.color")
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.color")
    assert e.value.errno == errno.ENODATA


def test_statfs(mnt):
    s = os.statvfs(mnt)
    assert s.f_bsize > 0 and s.f_blocks > 0 and s.f_namemax == 255


def test_fsync_and_fdatasync(mnt):
    fd = os.open(mnt / "s", os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"data")
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)


def test_readdir_stable_under_concurrent_changes(mnt):
    d = mnt / "many"
    d.mkdir()
    stable = {f"s{i:04d}" for i in range(1000)}
    for n in stable:
        (d / n).write_bytes(b"")
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            (d / f"c{i}").write_bytes(b"")
            if i >= 5:
                os.unlink(d / f"c{i - 5}")
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(3):
            seen = [e.name for e in os.scandir(d)]
            got = [n for n in seen if n.startswith("s")]
            assert len(got) == len(set(got)) == 1000
    finally:
        stop.set()
        t.join()


@pytest.mark.parametrize("name_len", [255])
def test_long_names(mnt, name_len):
    (mnt / ("n" * name_len)).write_bytes(b"ok")
    assert (mnt / ("n" * name_len)).read_bytes() == b"ok"


def test_mknod_fifo(mnt):
    os.mkfifo(mnt / "fifo")
    assert stat.S_ISFIFO(os.lstat(mnt / "fifo").st_mode)
