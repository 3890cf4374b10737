"""Error cases: each must be the errno Linux gives on a local filesystem,
never a crash or a generic EIO."""
from __future__ import annotations

import errno
import os

import pytest


def _err(fn, *args, **kw) -> str:
    with pytest.raises(OSError) as e:
        fn(*args, **kw)
    return errno.errorcode.get(e.value.errno, str(e.value.errno))


def test_enoent(mnt):
    assert _err(os.stat, mnt / "missing") == "ENOENT"
    assert _err(os.open, mnt / "missing", os.O_RDONLY) == "ENOENT"
    assert _err(os.unlink, mnt / "missing") == "ENOENT"
    assert _err(os.rmdir, mnt / "missing") == "ENOENT"
    assert _err(os.rename, mnt / "missing", mnt / "x") == "ENOENT"
    assert _err(os.mkdir, mnt / "no/such/parent") == "ENOENT"
    assert _err(os.link, mnt / "missing", mnt / "x") == "ENOENT"
    assert _err(os.readlink, mnt / "missing") == "ENOENT"
    assert _err(os.getxattr, mnt / "missing", "user.x") == "ENOENT"
    assert _err(os.listdir, mnt / "missing") == "ENOENT"
    assert not (mnt / "x").exists()


def test_eexist(mnt):
    (mnt / "f").write_bytes(b"")
    (mnt / "d").mkdir()
    os.symlink("f", mnt / "s")
    assert _err(os.mkdir, mnt / "d") == "EEXIST"
    assert _err(os.mkdir, mnt / "f") == "EEXIST"
    assert _err(os.open, mnt / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EEXIST"
    assert _err(os.open, mnt / "s", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == "EEXIST"
    assert _err(os.link, mnt / "f", mnt / "d") == "EEXIST"
    assert _err(os.symlink, "x", mnt / "f") == "EEXIST"
    assert _err(os.mkfifo, mnt / "f") == "EEXIST"


def test_enotempty(mnt):
    (mnt / "d/sub").mkdir(parents=True)
    (mnt / "e").mkdir()
    (mnt / "withfile").mkdir()
    (mnt / "withfile/f").write_bytes(b"")
    assert _err(os.rmdir, mnt / "d") == "ENOTEMPTY"
    assert _err(os.rmdir, mnt / "withfile") == "ENOTEMPTY"
    assert _err(os.rename, mnt / "e", mnt / "d") == "ENOTEMPTY"
    assert (mnt / "d/sub").is_dir() and (mnt / "e").is_dir()


def test_eisdir(mnt):
    (mnt / "d").mkdir()
    (mnt / "f").write_bytes(b"f")
    assert _err(os.unlink, mnt / "d") == "EISDIR"
    assert _err(os.rename, mnt / "f", mnt / "d") == "EISDIR"
    assert _err(os.open, mnt / "d", os.O_WRONLY) == "EISDIR"
    assert _err(os.open, mnt / "d", os.O_RDWR) == "EISDIR"
    assert _err(os.truncate, mnt / "d", 0) == "EISDIR"
    fd = os.open(mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _err(os.read, fd, 10) == "EISDIR"
    finally:
        os.close(fd)
    assert (mnt / "f").read_bytes() == b"f"


def test_enotdir(mnt):
    (mnt / "f").write_bytes(b"")
    (mnt / "e").mkdir()
    assert _err(os.rename, mnt / "e", mnt / "f") == "ENOTDIR"
    assert _err(os.rmdir, mnt / "f") == "ENOTDIR"
    assert _err(os.stat, mnt / "f/x") == "ENOTDIR"
    assert _err(os.mkdir, mnt / "f/x") == "ENOTDIR"
    assert _err(os.listdir, mnt / "f") == "ENOTDIR"
    assert _err(os.open, mnt / "f", os.O_RDONLY | os.O_DIRECTORY) == "ENOTDIR"


def test_enametoolong(mnt):
    long = "n" * 256
    (mnt / "f").write_bytes(b"")
    assert _err(os.mkdir, mnt / long) == "ENAMETOOLONG"
    assert _err(open, mnt / long, "w") == "ENAMETOOLONG"
    assert _err(os.stat, mnt / long) == "ENAMETOOLONG"
    assert _err(os.symlink, "f", mnt / long) == "ENAMETOOLONG"
    assert _err(os.link, mnt / "f", mnt / long) == "ENAMETOOLONG"
    assert _err(os.rename, mnt / "f", mnt / long) == "ENAMETOOLONG"
    assert os.listdir(mnt) == ["f"]


def test_einval_dir_into_own_subtree(mnt):
    (mnt / "a/b").mkdir(parents=True)
    assert _err(os.rename, mnt / "a", mnt / "a/b/c") == "EINVAL"
    assert _err(os.rename, mnt / "a", mnt / "a/c") == "EINVAL"
    assert sorted(os.listdir(mnt)) == ["a"] and os.listdir(mnt / "a") == ["b"]


def test_einval_readlink_of_non_symlink(mnt):
    (mnt / "f").write_bytes(b"")
    assert _err(os.readlink, mnt / "f") == "EINVAL"


def test_hard_link_to_directory_refused(mnt):
    (mnt / "d").mkdir()
    assert _err(os.link, mnt / "d", mnt / "d2") == "EPERM"
    assert not (mnt / "d2").exists()


def test_xattr_errors(mnt):
    (mnt / "f").write_bytes(b"")
    assert _err(os.getxattr, mnt / "f", "user.none") == "ENODATA"
    assert _err(os.removexattr, mnt / "f", "user.none") == "ENODATA"
    assert _err(os.setxattr, mnt / "f", "user.none", b"v", os.XATTR_REPLACE) == "ENODATA"
    os.setxattr(mnt / "f", "user.k", b"v")
    assert _err(os.setxattr, mnt / "f", "user.k", b"w", os.XATTR_CREATE) == "EEXIST"
    assert os.getxattr(mnt / "f", "user.k") == b"v"
