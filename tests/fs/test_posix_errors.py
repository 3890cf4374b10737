"""Error cases: every one must be the errno Linux gives, never a crash."""
from __future__ import annotations

import errno
import os

import pytest


def _err(fn, *args):
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def test_enoent(mnt):
    assert _err(os.stat, mnt / "missing") == errno.ENOENT
    assert _err(os.unlink, mnt / "missing") == errno.ENOENT
    assert _err(os.rename, mnt / "missing", mnt / "x") == errno.ENOENT
    assert _err(os.mkdir, mnt / "no/such/parent") == errno.ENOENT


def test_eexist(mnt):
    (mnt / "f").write_bytes(b"")
    (mnt / "d").mkdir()
    assert _err(os.mkdir, mnt / "d") == errno.EEXIST
    assert _err(os.mkdir, mnt / "f") == errno.EEXIST
    assert _err(os.open, mnt / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    assert _err(os.link, mnt / "f", mnt / "d") == errno.EEXIST
    assert _err(os.symlink, "x", mnt / "f") == errno.EEXIST


def test_enotempty_eisdir_enotdir(mnt):
    (mnt / "d/sub").mkdir(parents=True)
    (mnt / "f").write_bytes(b"")
    (mnt / "e").mkdir()
    assert _err(os.rmdir, mnt / "d") == errno.ENOTEMPTY
    assert _err(os.rename, mnt / "e", mnt / "d") == errno.ENOTEMPTY
    assert _err(os.unlink, mnt / "d") == errno.EISDIR
    assert _err(os.rename, mnt / "f", mnt / "d") == errno.EISDIR
    assert _err(os.rename, mnt / "e", mnt / "f") == errno.ENOTDIR
    assert _err(os.rmdir, mnt / "f") == errno.ENOTDIR
    assert _err(os.stat, mnt / "f/x") == errno.ENOTDIR
    assert _err(os.open, mnt / "d", os.O_WRONLY) == errno.EISDIR


def test_enametoolong(mnt):
    assert _err(os.mkdir, mnt / ("n" * 256)) == errno.ENAMETOOLONG
    assert _err(open, mnt / ("n" * 256), "w") == errno.ENAMETOOLONG


def test_einval_dir_into_own_subtree(mnt):
    (mnt / "a/b").mkdir(parents=True)
    assert _err(os.rename, mnt / "a", mnt / "a/b/c") == errno.EINVAL


def test_eperm_hard_link_to_directory(mnt):
    (mnt / "d").mkdir()
    assert _err(os.link, mnt / "d", mnt / "d2") in (errno.EPERM, errno.EACCES)


def test_xattr_errors(mnt):
    (mnt / "f").write_bytes(b"")
    assert _err(os.getxattr, mnt / "f", "user.none") == errno.ENODATA
    assert _err(os.removexattr, mnt / "f", "user.none") == errno.ENODATA
