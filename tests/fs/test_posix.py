"""The POSIX surface (SPEC §3) by plain system calls on a real mount, with
persistence across unmount/mount where it matters. Run with
FERRY_POSIX_TARGET=local to check the tests themselves on a local directory."""
from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.mount import snapshot_diff, tree_snapshot

MiB = 1024 * 1024
GiB = 1024 * MiB

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(src, dst, flags: int) -> None:
    if not hasattr(_libc, "renameat2"):
        pytest.skip("libc has no renameat2")
    r = _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), ctypes.c_uint(flags))
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(src))


def renameat2_or_skip(volume, src, dst, flags: int) -> None:
    """renameat2; a reference filesystem (FERRY_POSIX_TARGET=local) that does not know
    the flags skips the test, ferry answering EINVAL fails it."""
    try:
        renameat2(src, dst, flags)
    except OSError as e:
        if volume.kind == "local" and e.errno in (errno.EINVAL, errno.ENOSYS):
            pytest.skip(f"renameat2 flags {flags} not supported on this target ({errno.errorcode[e.errno]})")
        raise


def pattern(size: int) -> bytes:
    """Position-dependent bytes: a block read from the wrong offset shows."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(i.to_bytes(8, "little")).digest()
        i += 1
    return bytes(out[:size])


def sha256_file(path, chunk: int = MiB) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
            n += len(b)
    return n, h.hexdigest()


# ----------------------------------------------------------------------------- regular files
def test_create_write_read_overwrite(mnt):
    p = mnt / "f"
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    assert os.write(fd, b"hello world") == 11
    os.close(fd)
    assert p.read_bytes() == b"hello world"
    with open(p, "r+b") as f:
        f.seek(6)
        f.write(b"ferry")
    assert p.read_bytes() == b"hello ferry"
    with open(p, "r+b") as f:                  # overwrite that extends the file
        f.seek(9)
        f.write(b"-boats")
    assert p.read_bytes() == b"hello fer-boats"
    assert p.stat().st_size == 15
    p.write_bytes(b"new")                     # O_TRUNC rewrite
    assert p.read_bytes() == b"new" and p.stat().st_size == 3
    with open(p, "rb") as f:
        f.seek(100)
        assert f.read(10) == b""              # read past EOF


@pytest.mark.stores("file", "s3")
def test_large_sequential_write_read_20mib(mnt, remount):
    data = pattern(20 * MiB)
    expected = (len(data), hashlib.sha256(data).hexdigest())
    p = mnt / "big"
    with open(p, "wb", buffering=0) as f:
        for off in range(0, len(data), MiB):
            assert f.write(data[off:off + MiB]) == len(data[off:off + MiB])
        os.fsync(f.fileno())
    assert p.stat().st_size == 20 * MiB
    assert sha256_file(p, 128 * 1024) == expected
    remount(fresh_cache=True)                 # read back from the store only
    assert sha256_file(p) == expected


def test_sparse_holes_read_as_zeros(mnt, remount):
    p = mnt / "sparse"
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"A" * 10, 3 * MiB + 5)   # blocks 0-2 are a hole
        assert os.fstat(fd).st_size == 3 * MiB + 15
        assert os.pread(fd, 3 * MiB + 5, 0) == bytes(3 * MiB + 5)
        os.pwrite(fd, b"B", MiB + 7)            # write into the middle of the hole
    finally:
        os.close(fd)
    remount()
    data = p.read_bytes()
    assert len(data) == 3 * MiB + 15
    assert data[MiB + 7:MiB + 8] == b"B" and data[3 * MiB + 5:] == b"A" * 10
    assert data[:MiB + 7] == bytes(MiB + 7) and data[MiB + 8:3 * MiB + 5] == bytes(2 * MiB - 3)


def test_write_beyond_4gib(mnt, remount):
    p = mnt / "huge"
    off = 5 * GiB
    with open(p, "wb") as f:
        f.seek(off)
        f.write(b"tail")
        f.seek(1000)
        f.write(b"head")
    assert p.stat().st_size == off + 4
    remount()
    assert p.stat().st_size == off + 4
    with open(p, "rb") as f:
        assert f.read(1004) == bytes(1000) + b"head"
        f.seek(4 * GiB - 2)                   # across the 32-bit boundary: a hole
        assert f.read(8192) == bytes(8192)
        f.seek(off - 4)
        assert f.read() == bytes(4) + b"tail"


def test_o_append(mnt):
    p = mnt / "log"
    p.write_bytes(b"a")
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"b")
        os.write(fd, b"cd")
    finally:
        os.close(fd)
    fd2 = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd2, b"e")
    finally:
        os.close(fd2)
    assert p.read_bytes() == b"abcde"


@pytest.mark.stores("file", "s3")
def test_truncate_up_down_and_grow_again(mnt, remount):
    p = mnt / "t"
    p.write_bytes(b"x" * 100)
    os.truncate(p, 2 * MiB + 3)               # up: the new part reads as zeros
    assert p.read_bytes() == b"x" * 100 + bytes(2 * MiB + 3 - 100)
    p.write_bytes(b"y" * 3_000_000)
    os.truncate(p, 1_500_000)                 # down, mid-block
    assert p.stat().st_size == 1_500_000
    os.truncate(p, 2_500_000)                 # grow again: the old tail must not come back
    expect = b"y" * 1_500_000 + bytes(1_000_000)
    assert p.read_bytes() == expect
    remount(fresh_cache=True)
    assert p.stat().st_size == 2_500_000
    assert p.read_bytes() == expect
    with open(p, "r+b") as f:
        f.truncate(0)
        f.seek(10)
        f.write(b"z")
    assert p.read_bytes() == bytes(10) + b"z"


# ----------------------------------------------------------------------------- directories
def test_directories_nested_mkdir_rmdir(mnt, remount):
    (mnt / "a/b/c").mkdir(parents=True)
    (mnt / "a/b/c/f").write_bytes(b"1")
    assert os.stat(mnt / "a").st_nlink == 3      # ".", its entry in mnt, "b/.."
    assert os.stat(mnt / "a/b/c").st_nlink == 2
    (mnt / "a/x").mkdir()
    assert os.stat(mnt / "a").st_nlink == 4
    os.rmdir(mnt / "a/x")
    assert os.stat(mnt / "a").st_nlink == 3
    remount()
    assert (mnt / "a/b/c/f").read_bytes() == b"1"
    os.unlink(mnt / "a/b/c/f")
    os.rmdir(mnt / "a/b/c")
    assert os.listdir(mnt / "a/b") == []
    assert os.stat(mnt / "a/b").st_nlink == 2
    os.rmdir(mnt / "a/b")
    os.rmdir(mnt / "a")
    assert os.listdir(mnt) == []


def test_readdir_lists_entries_with_types(mnt, remount):
    for i in range(150):
        (mnt / f"file{i:03d}").write_bytes(b"")
    for i in range(20):
        (mnt / f"dir{i:02d}").mkdir()
    os.symlink("file000", mnt / "sym")
    expected = {f"file{i:03d}": "f" for i in range(150)} | {f"dir{i:02d}": "d" for i in range(20)} | {"sym": "l"}

    def listing():
        out = {}
        with os.scandir(mnt) as it:
            for e in it:
                assert e.name not in out, f"{e.name} listed twice"
                out[e.name] = "l" if e.is_symlink() else "d" if e.is_dir(follow_symlinks=False) else \
                    "f" if e.is_file(follow_symlinks=False) else "?"
                assert e.inode() == os.lstat(e.path).st_ino
        return out

    assert listing() == expected
    remount()
    assert listing() == expected
    assert sorted(os.listdir(mnt / "dir00")) == []


def test_readdir_stable_under_concurrent_changes(mnt):
    d = mnt / "many"
    d.mkdir()
    stable = {f"s{i:04d}" for i in range(1000)}
    for n in stable:
        (d / n).write_bytes(b"")
    stop = threading.Event()
    errors: list[BaseException] = []
    churned = [0]

    def churn():
        try:
            i = 0
            while not stop.is_set():
                (d / f"c{i:06d}").write_bytes(b"")
                if i >= 20:
                    os.unlink(d / f"c{i - 20:06d}")
                if i % 7 == 0:
                    os.rename(d / f"c{i:06d}", d / f"r{i:06d}")
                    os.rename(d / f"r{i:06d}", d / f"c{i:06d}")
                i += 1
                churned[0] = i
        except BaseException as e:              # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(5):
            with os.scandir(d) as it:
                seen = [e.name for e in it]
            got = [n for n in seen if n.startswith("s")]
            dupes = {n for n in got if got.count(n) > 1} if len(got) != len(set(got)) else set()
            assert not dupes, f"listed more than once: {sorted(dupes)[:10]}"
            assert set(got) == stable, f"missing: {sorted(stable - set(got))[:10]}"
    finally:
        stop.set()
        t.join()
    assert not errors, f"concurrent changes failed: {errors[0]!r}"
    assert churned[0] > 0


# ----------------------------------------------------------------------------- links
def test_symlinks(mnt, remount):
    (mnt / "target").write_bytes(b"t")
    os.symlink("target", mnt / "link")
    os.symlink("/nonexistent/dangling", mnt / "dangling")
    os.symlink("x" * 1000, mnt / "longtarget")
    st_ = os.lstat(mnt / "link")
    assert stat.S_ISLNK(st_.st_mode) and st_.st_size == len("target")
    assert (mnt / "link").read_bytes() == b"t"
    assert os.stat(mnt / "link").st_ino == os.stat(mnt / "target").st_ino
    remount()
    assert os.readlink(mnt / "link") == "target"
    assert (mnt / "link").read_bytes() == b"t"
    assert stat.S_ISLNK(os.lstat(mnt / "dangling").st_mode)
    assert os.readlink(mnt / "dangling") == "/nonexistent/dangling"
    assert not os.path.exists(mnt / "dangling")
    assert os.readlink(mnt / "longtarget") == "x" * 1000
    os.unlink(mnt / "link")
    assert (mnt / "target").read_bytes() == b"t"


def test_hard_links(mnt, remount):
    (mnt / "orig").write_bytes(b"shared")
    (mnt / "sub").mkdir()
    os.link(mnt / "orig", mnt / "second")
    os.link(mnt / "orig", mnt / "sub/third")
    assert os.stat(mnt / "orig").st_nlink == 3
    assert os.stat(mnt / "orig").st_ino == os.stat(mnt / "second").st_ino == os.stat(mnt / "sub/third").st_ino
    with open(mnt / "second", "ab") as f:
        f.write(b"!")
    assert (mnt / "sub/third").read_bytes() == b"shared!"
    remount()
    assert os.stat(mnt / "sub/third").st_nlink == 3
    assert (mnt / "orig").read_bytes() == b"shared!"
    os.unlink(mnt / "orig")
    assert os.stat(mnt / "second").st_nlink == 2
    os.chmod(mnt / "second", 0o600)               # metadata is shared too
    assert stat.S_IMODE(os.stat(mnt / "sub/third").st_mode) == 0o600
    os.unlink(mnt / "sub/third")
    assert os.stat(mnt / "second").st_nlink == 1
    assert (mnt / "second").read_bytes() == b"shared!"


# ----------------------------------------------------------------------------- rename
def test_rename_files_and_directories(mnt, remount):
    (mnt / "d1").mkdir()
    (mnt / "d2").mkdir()
    (mnt / "d1/f").write_bytes(b"f")
    os.rename(mnt / "d1/f", mnt / "d1/g")                 # same directory
    os.rename(mnt / "d1/g", mnt / "d2/g")                 # across directories
    (mnt / "d2/h").write_bytes(b"h")
    ino = os.stat(mnt / "d2/g").st_ino
    os.rename(mnt / "d2/g", mnt / "d2/h")                 # over an existing file
    assert (mnt / "d2/h").read_bytes() == b"f" and os.stat(mnt / "d2/h").st_ino == ino
    assert sorted(os.listdir(mnt / "d2")) == ["h"]
    (mnt / "empty").mkdir()
    os.rename(mnt / "d1", mnt / "empty")                  # dir over an empty dir
    assert not (mnt / "d1").exists() and (mnt / "empty").is_dir()
    (mnt / "tree/sub").mkdir(parents=True)
    (mnt / "tree/sub/leaf").write_bytes(b"leaf")
    os.rename(mnt / "tree", mnt / "d2/moved")             # non-empty dir across directories
    assert os.stat(mnt / "d2").st_nlink == 3              # gained the subdir "moved"
    assert (mnt / "d2/moved/sub/leaf").read_bytes() == b"leaf"
    os.rename(mnt / "d2/h", mnt / "d2/h")                 # onto itself: no-op
    remount()
    assert sorted(os.listdir(mnt)) == ["d2", "empty"]
    assert sorted(os.listdir(mnt / "d2")) == ["h", "moved"]
    assert (mnt / "d2/h").read_bytes() == b"f"
    assert (mnt / "d2/moved/sub/leaf").read_bytes() == b"leaf"


def test_rename_noreplace(mnt, volume):
    (mnt / "a").write_bytes(b"A")
    (mnt / "b").write_bytes(b"B")
    with pytest.raises(OSError) as e:
        renameat2_or_skip(volume, mnt / "a", mnt / "b", RENAME_NOREPLACE)
    assert e.value.errno == errno.EEXIST, "RENAME_NOREPLACE over an existing file"
    assert (mnt / "a").read_bytes() == b"A" and (mnt / "b").read_bytes() == b"B"
    renameat2(mnt / "a", mnt / "c", RENAME_NOREPLACE)     # target free: a plain rename
    assert not (mnt / "a").exists() and (mnt / "c").read_bytes() == b"A"


def test_rename_exchange(mnt, remount, volume):
    (mnt / "a").write_bytes(b"A")
    (mnt / "d").mkdir()
    (mnt / "d/inner").write_bytes(b"I")
    renameat2_or_skip(volume, mnt / "a", mnt / "d", RENAME_EXCHANGE)   # a file and a directory swap
    assert (mnt / "d").read_bytes() == b"A"
    assert (mnt / "a/inner").read_bytes() == b"I"
    with pytest.raises(OSError) as e:
        renameat2(mnt / "a", mnt / "missing", RENAME_EXCHANGE)
    assert e.value.errno == errno.ENOENT
    remount()
    assert (mnt / "d").read_bytes() == b"A" and (mnt / "a/inner").read_bytes() == b"I"


# ----------------------------------------------------------------------------- open-unlinked
def test_unlink_open_file_keeps_data_until_close(mnt, remount):
    p = mnt / "tmp"
    p.write_bytes(b"still here")
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists()
        assert os.listdir(mnt) == []
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 100, 0) == b"still here"
        os.pwrite(fd, b"STILL", 0)
        os.pwrite(fd, b"!", 2 * MiB)             # grows it, into another block
        assert os.pread(fd, 10, 0) == b"STILL here"
        assert os.pread(fd, 10, 2 * MiB) == b"!"
        assert os.fstat(fd).st_size == 2 * MiB + 1
        p.write_bytes(b"a new file with the old name")
        assert os.pread(fd, 10, 0) == b"STILL here"
    finally:
        os.close(fd)
    remount()
    assert p.read_bytes() == b"a new file with the old name"
    assert os.listdir(mnt) == ["tmp"]


# ----------------------------------------------------------------------------- attributes
def test_chmod_chown_utime_ns(mnt, remount):
    p = mnt / "m"
    p.write_bytes(b"")
    (mnt / "dir").mkdir()
    os.chmod(p, 0o640)
    os.chmod(mnt / "dir", 0o2711)
    if os.geteuid() == 0:
        os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    os.utime(mnt / "dir", ns=(1_500_000_000_000_000_001, 1_500_000_000_999_999_999))
    assert os.stat(p).st_mtime_ns == 1_700_000_000_987_654_321
    remount()
    st_ = os.stat(p)
    assert stat.S_IMODE(st_.st_mode) == 0o640 and stat.S_ISREG(st_.st_mode)
    if os.geteuid() == 0:
        assert (st_.st_uid, st_.st_gid) == (1234, 5678)
    assert st_.st_mtime_ns == 1_700_000_000_987_654_321
    assert st_.st_atime_ns == 1_600_000_000_123_456_789
    sd = os.stat(mnt / "dir")
    assert stat.S_IMODE(sd.st_mode) == 0o2711
    assert (sd.st_atime_ns, sd.st_mtime_ns) == (1_500_000_000_000_000_001, 1_500_000_000_999_999_999)


def test_write_and_truncate_update_mtime(mnt):
    p = mnt / "w"
    p.write_bytes(b"1")
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    with open(p, "ab") as f:
        f.write(b"2")
    assert os.stat(p).st_mtime_ns != 1_000_000_000
    os.utime(p, ns=(1_000_000_000, 1_000_000_000))
    os.truncate(p, 0)
    assert os.stat(p).st_mtime_ns != 1_000_000_000


def _become_nobody() -> None:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def _as_nobody(*argv: str) -> tuple[int, str]:
    """Run a coreutils command as uid/gid 65534 (C locale: stable messages)."""
    r = subprocess.run(list(argv), preexec_fn=_become_nobody, capture_output=True, text=True, cwd="/",
                       env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, timeout=60)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_default_permissions_enforced(mnt):
    (mnt / "secret").write_bytes(b"root only")
    os.chmod(mnt / "secret", 0o600)
    (mnt / "public").write_bytes(b"everyone")
    os.chmod(mnt / "public", 0o644)
    (mnt / "private").mkdir(mode=0o700)
    os.chmod(mnt / "private", 0o700)
    os.chmod(mnt, 0o755)
    denied = "Permission denied"                  # strerror(EACCES)
    assert _as_nobody("cat", str(mnt / "public")) == (0, "everyone")   # the mount is reachable at all
    rc, out = _as_nobody("cat", str(mnt / "secret"))
    assert rc != 0 and denied in out, out
    rc, out = _as_nobody("sh", "-c", ': >> "$1"', "sh", str(mnt / "public"))
    assert rc != 0 and denied in out, out
    rc, out = _as_nobody("touch", str(mnt / "new"))
    assert rc != 0 and denied in out, out
    rc, out = _as_nobody("ls", str(mnt / "private"))
    assert rc != 0 and denied in out, out
    assert not (mnt / "new").exists()
    assert (mnt / "public").read_bytes() == b"everyone"


def test_xattrs(mnt, remount):
    p = mnt / "x"
    p.write_bytes(b"")
    (mnt / "d").mkdir()
    os.setxattr(p, "user.color", b"blue")
    os.setxattr(p, "user.empty", b"")
    os.setxattr(p, "user.bin", bytes(range(256)) * 4)
    os.setxattr(mnt / "d", "user.onadir", b"yes")
    os.setxattr(p, "user.color", b"green")                # replace
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.color", b"red", os.XATTR_CREATE)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.nothere", b"x", os.XATTR_REPLACE)
    assert e.value.errno == errno.ENODATA
    remount()
    assert os.getxattr(p, "user.color") == b"green"
    assert os.getxattr(p, "user.empty") == b""
    assert os.getxattr(p, "user.bin") == bytes(range(256)) * 4
    assert os.getxattr(mnt / "d", "user.onadir") == b"yes"
    assert sorted(k for k in os.listxattr(p) if k.startswith("user.")) == ["user.bin", "user.color", "user.empty"]
    os.removexattr(p, "user.color")
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.color")
    assert e.value.errno == errno.ENODATA
    assert sorted(k for k in os.listxattr(p) if k.startswith("user.")) == ["user.bin", "user.empty"]


def test_statfs(mnt):
    s = os.statvfs(mnt)
    assert s.f_bsize > 0 and s.f_frsize > 0
    assert s.f_blocks > 0 and s.f_bfree <= s.f_blocks and s.f_bavail <= s.f_blocks
    assert s.f_namemax == 255


def test_fsync_and_fdatasync(mnt):
    fd = os.open(mnt / "s", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"data")
        assert os.fsync(fd) is None             # raises on any error
        os.write(fd, b"more")
        assert os.fdatasync(fd) is None
    finally:
        os.close(fd)
    dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)                             # fsync of a directory
    finally:
        os.close(dfd)
    assert (mnt / "s").read_bytes() == b"datamore"


def test_long_name_255_bytes(mnt, remount):
    name = "n" * 250 + "é" + "xyz"                 # 255 bytes in UTF-8
    assert len(name.encode()) == 255
    (mnt / name).write_bytes(b"ok")
    (mnt / ("d" * 255)).mkdir()
    remount()
    assert (mnt / name).read_bytes() == b"ok"
    assert sorted(os.listdir(mnt)) == sorted([name, "d" * 255])


def test_mkfifo(mnt):
    os.mkfifo(mnt / "fifo", 0o640)
    st_ = os.lstat(mnt / "fifo")
    assert stat.S_ISFIFO(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o640


# ----------------------------------------------------------------------------- persistence
@pytest.mark.stores("file", "s3")
def test_everything_persists_across_remount(mnt, remount):
    (mnt / "dir/sub").mkdir(parents=True)
    (mnt / "dir/data").write_bytes(pattern(3 * MiB + 123))
    (mnt / "small").write_bytes(b"small")
    os.chmod(mnt / "small", 0o751)
    os.link(mnt / "small", mnt / "dir/sub/small-link")
    os.symlink("../small", mnt / "dir/sym")
    os.setxattr(mnt / "dir/data", "user.k", b"v")
    os.setxattr(mnt / "dir", "user.d", b"")
    os.mkdir(mnt / "modes", 0o700)
    os.utime(mnt / "dir/data", ns=(1_111_111_111_111_111_111, 1_222_222_222_222_222_222))
    os.utime(mnt / "modes", ns=(1_333_333_333_333_333_333, 1_444_444_444_444_444_444))
    before = tree_snapshot(mnt, times=True)
    assert before["dir/sub/small-link"]["nlink"] == 2
    remount()
    diffs = snapshot_diff(before, tree_snapshot(mnt, times=True))
    assert not diffs, "\n".join(diffs)
    remount(fresh_cache=True)
    diffs = snapshot_diff(before, tree_snapshot(mnt, times=True))
    assert not diffs, "\n".join(diffs)


def test_mount_gets_a_large_kernel_readahead_window(volume, mnt):
    """The kernel's 128 KiB default would split sequential reads into many small requests."""
    from fsd.lifecycle.kernel_tuning import mount_device
    if volume.mount is None:
        pytest.skip("not a ferry mount")
    dev = mount_device(str(volume.root))
    assert dev is not None
    ra = Path(f"/sys/class/bdi/{dev}/read_ahead_kb")
    if not os.access(ra, os.W_OK):
        pytest.skip("needs root to tune the bdi")
    os.stat(volume.root)                 # the kernel's INIT is answered by now; tuning follows it
    for _ in range(100):
        if int(ra.read_text()) == 4096:
            break
        time.sleep(0.05)
    assert int(ra.read_text()) == 4096
