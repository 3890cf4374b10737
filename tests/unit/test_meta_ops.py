"""MetaOps: every operation, its Linux error cases, and the records it emits."""
import errno
import stat

import pytest

from fsd.meta.check import check_state, find_orphans
from fsd.meta.ops import RENAME_EXCHANGE, RENAME_NOREPLACE, FsError, MetaOps
from fsd.meta.records import BLOCK, DENT, DENT_DEL, INODE, INODE_DEL, TRUNC, XATTR, XATTR_DEL
from fsd.meta.state import ROOT_INO, BlockRef, MetaState, new_volume_records

BS = 16
R = ROOT_INO
REG = stat.S_IFREG | 0o644


def H(i: int) -> bytes:
    return bytes([i]) * 32


@pytest.fixture
def ops():
    o = MetaOps(MetaState.from_records(BS, new_volume_records(100, uid=5, gid=6)))
    yield o
    # every test ends consistent, and replay of everything emitted gives the same state
    assert check_state(o.state) == []


def err(code, fn, *a, **kw):
    with pytest.raises(FsError) as e:
        fn(*a, **kw)
    assert e.value.errno == code, f"expected {errno.errorcode[code]}, got {e.value}"


def replay(o: MetaOps, committed: list) -> MetaState:
    return MetaState.from_records(BS, new_volume_records(100, uid=5, gid=6) + committed)


# ------------------------------------------------------------------ volume
def test_new_volume_root():
    s = MetaState.from_records(BS, new_volume_records(7, uid=1, gid=2, mode=0o700))
    root = s.inodes[R]
    assert stat.S_ISDIR(root.mode) and root.mode & 0o7777 == 0o700
    assert (root.uid, root.gid, root.nlink, root.mtime_ns) == (1, 2, 2, 7)
    assert s.next_ino == 2 and check_state(s) == []


def test_block_size_must_be_positive():
    with pytest.raises(ValueError):
        MetaState(0)


# ------------------------------------------------------------------ lookup
def test_lookup_and_dots(ops):
    d = ops.mkdir(R, b"d", 0o755, 0, 0, 200)
    f = ops.create(d.ino, b"f", 0o644, 0, 0, 200)
    assert ops.lookup(R, b"d") is d
    assert ops.lookup(d.ino, b"f") is f
    assert ops.lookup(d.ino, b".") is d
    assert ops.lookup(d.ino, b"..").ino == R
    assert ops.lookup(R, b"..").ino == R
    err(errno.ENOENT, ops.lookup, R, b"nope")
    err(errno.ENOTDIR, ops.lookup, f.ino, b"x")
    err(errno.ENOENT, ops.lookup, 999, b"x")
    err(errno.ENAMETOOLONG, ops.lookup, R, b"x" * 256)
    err(errno.EINVAL, ops.lookup, R, b"")
    err(errno.EINVAL, ops.lookup, R, b"a/b")
    err(errno.EINVAL, ops.lookup, R, b"a\0b")


def test_getattr(ops):
    assert ops.getattr(R).ino == R
    err(errno.ENOENT, ops.getattr, 42)


# ------------------------------------------------------------------ create
def test_create_regular_and_parent_times(ops):
    f = ops.create(R, b"f", 0o640, 10, 20, 300)
    assert f.mode == stat.S_IFREG | 0o640 and (f.uid, f.gid, f.nlink, f.size) == (10, 20, 1, 0)
    assert f.atime_ns == f.mtime_ns == f.ctime_ns == 300
    root = ops.getattr(R)
    assert root.mtime_ns == root.ctime_ns == 300 and root.nlink == 2
    recs = ops.take_pending()
    assert [r[0] for r in recs] == [INODE, DENT, INODE]
    assert recs[1] == [DENT, R, b"f", f.ino, 1]


@pytest.mark.parametrize("fmt", [stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK])
def test_create_special_files(ops, fmt):
    n = ops.create(R, b"n", fmt | 0o600, 0, 0, 1, rdev=0x0801)
    assert stat.S_IFMT(n.mode) == fmt
    assert n.rdev == (0x0801 if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0)


def test_create_errors(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    err(errno.EEXIST, ops.create, R, b"f", REG, 0, 0, 2)
    err(errno.EEXIST, ops.create, R, b".", REG, 0, 0, 2)
    err(errno.EEXIST, ops.mkdir, R, b"..", 0o755, 0, 0, 2)
    err(errno.ENOTDIR, ops.create, f.ino, b"x", REG, 0, 0, 2)
    err(errno.ENOENT, ops.create, 77, b"x", REG, 0, 0, 2)
    err(errno.EINVAL, ops.create, R, b"d", stat.S_IFDIR | 0o755, 0, 0, 2)
    err(errno.EINVAL, ops.create, R, b"l", stat.S_IFLNK | 0o777, 0, 0, 2)
    err(errno.ENAMETOOLONG, ops.create, R, b"x" * 256, REG, 0, 0, 2)
    err(errno.EINVAL, ops.create, R, b"a/b", REG, 0, 0, 2)
    assert ops.create(R, b"x" * 255, REG, 0, 0, 2).nlink == 1


def test_failed_operation_emits_nothing(ops):
    ops.create(R, b"f", REG, 0, 0, 1)
    ops.take_pending()
    err(errno.EEXIST, ops.create, R, b"f", REG, 0, 0, 2)
    err(errno.ENOTEMPTY, ops.rmdir, R, b"..", 2)
    assert ops.pending == [] and ops.getattr(R).mtime_ns == 1


def test_inode_numbers_are_never_reused(ops):
    a = ops.create(R, b"a", REG, 0, 0, 1)
    ops.unlink(R, b"a", 2)
    ops.purge(a.ino)
    b = ops.create(R, b"b", REG, 0, 0, 3)
    assert b.ino > a.ino and ops.state.next_ino == b.ino + 1


def test_setgid_directory_passes_its_group_down(ops):
    d = ops.mkdir(R, b"g", 0o2775, 0, 50, 1)
    assert d.mode & stat.S_ISGID
    f = ops.create(d.ino, b"f", REG, 1, 1, 2)
    sub = ops.mkdir(d.ino, b"s", 0o755, 1, 1, 2)
    assert f.gid == 50 and sub.gid == 50 and sub.mode & stat.S_ISGID
    assert not f.mode & stat.S_ISGID


# ------------------------------------------------------------ mkdir / rmdir
def test_mkdir_rmdir(ops):
    d = ops.mkdir(R, b"d", 0o750, 3, 4, 10)
    assert d.mode == stat.S_IFDIR | 0o750 and d.nlink == 2
    assert ops.getattr(R).nlink == 3
    ops.rmdir(R, b"d", 20)
    assert d.ino not in ops.state.inodes and d.ino not in ops.state.entries
    root = ops.getattr(R)
    assert root.nlink == 2 and root.mtime_ns == root.ctime_ns == 20
    assert [r[0] for r in ops.take_pending()][-3:] == [DENT_DEL, INODE_DEL, INODE]


def test_rmdir_errors(ops):
    d = ops.mkdir(R, b"d", 0o755, 0, 0, 1)
    ops.create(d.ino, b"f", REG, 0, 0, 1)
    ops.create(R, b"file", REG, 0, 0, 1)
    err(errno.ENOTEMPTY, ops.rmdir, R, b"d", 2)
    err(errno.ENOTDIR, ops.rmdir, R, b"file", 2)
    err(errno.ENOENT, ops.rmdir, R, b"none", 2)
    err(errno.EINVAL, ops.rmdir, R, b".", 2)
    err(errno.ENOTEMPTY, ops.rmdir, d.ino, b"..", 2)
    err(errno.ENAMETOOLONG, ops.rmdir, R, b"x" * 256, 2)


def test_readdir_of_removed_directory_is_empty(ops):
    d = ops.mkdir(R, b"d", 0o755, 0, 0, 1)
    ops.rmdir(R, b"d", 2)
    assert ops.readdir(d.ino, 0) == []


# ---------------------------------------------------------------- symlink
def test_symlink(ops):
    s = ops.symlink(R, b"l", b"../target", 7, 8, 5)
    assert s.mode == stat.S_IFLNK | 0o777 and s.size == 9 and s.target == b"../target"
    assert (s.uid, s.gid, s.nlink) == (7, 8, 1)
    err(errno.EEXIST, ops.symlink, R, b"l", b"x", 0, 0, 6)
    err(errno.ENOENT, ops.symlink, R, b"m", b"", 0, 0, 6)
    err(errno.ENAMETOOLONG, ops.symlink, R, b"m", b"x" * 4096, 0, 0, 6)
    err(errno.EINVAL, ops.setattr, s.ino, 7, size=0)


# ------------------------------------------------------------ link/unlink
def test_link_and_unlink(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    d = ops.mkdir(R, b"d", 0o755, 0, 0, 1)
    g = ops.link(f.ino, d.ino, b"g", 5)
    assert g is f and f.nlink == 2 and f.ctime_ns == 5 and f.mtime_ns == 1
    assert ops.lookup(d.ino, b"g") is f
    assert ops.getattr(d.ino).mtime_ns == 5
    err(errno.EEXIST, ops.link, f.ino, R, b"f", 6)
    err(errno.EEXIST, ops.link, f.ino, R, b".", 6)
    err(errno.EPERM, ops.link, d.ino, R, b"d2", 6)
    err(errno.ENOENT, ops.link, 999, R, b"x", 6)
    err(errno.ENOTDIR, ops.link, f.ino, f.ino, b"x", 6)
    assert ops.unlink(R, b"f", 7) is f and f.nlink == 1 and f.ctime_ns == 7
    assert ops.getattr(R).mtime_ns == 7
    err(errno.ENOENT, ops.unlink, R, b"f", 8)
    err(errno.EISDIR, ops.unlink, R, b"d", 8)
    err(errno.EISDIR, ops.unlink, R, b"..", 8)
    err(errno.ENOTDIR, ops.unlink, f.ino, b"x", 8)


def test_unlink_open_file_then_purge(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.note_write(f.ino, 40, 2)
    ops.set_block(f.ino, 0, BlockRef(H(1), 16))
    ops.set_block(f.ino, 1, BlockRef(H(2), 16))
    ops.setxattr(f.ino, b"user.a", b"v", 3)
    n = ops.unlink(R, b"f", 4)
    assert n.nlink == 0 and f.ino in ops.state.inodes     # still readable while open
    assert ops.orphans() == [f.ino] and find_orphans(ops.state) == [f.ino]
    assert check_state(ops.state) == []                     # an orphan is not a problem
    err(errno.ENOENT, ops.link, f.ino, R, b"again", 5)      # no resurrection
    ops.note_write(f.ino, 48, 5)                             # writes through the open handle
    ops.purge(f.ino)
    assert f.ino not in ops.state.inodes and f.ino not in ops.state.blocks
    assert ops.orphans() == [] and ops.usage() == (1, 0)
    recs = ops.take_pending()
    assert recs[-1] == [INODE_DEL, f.ino]                    # no INODE after the deletion
    ops.purge(f.ino)                                         # gone: no-op
    assert ops.pending == []
    assert replay(ops, recs) == ops.state


def test_purge_refuses_linked_inode(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    with pytest.raises(ValueError):
        ops.purge(f.ino)


# ------------------------------------------------------------------ rename
def test_rename_simple_and_new_cookie(ops):
    a = ops.create(R, b"a", REG, 0, 0, 1)
    ops.create(R, b"b", REG, 0, 0, 1)
    assert ops.rename(R, b"a", R, b"c", 0, 9) is None
    assert [(n, c) for n, _, c in ops.readdir(R, 0)] == [(b"b", 2), (b"c", 3)]
    assert ops.lookup(R, b"c") is a and a.ctime_ns == 9 and a.mtime_ns == 1
    err(errno.ENOENT, ops.lookup, R, b"a")
    root = ops.getattr(R)
    assert root.mtime_ns == root.ctime_ns == 9


def test_rename_over_file_returns_replaced(ops):
    a = ops.create(R, b"a", REG, 0, 0, 1)
    b = ops.create(R, b"b", REG, 0, 0, 1)
    replaced = ops.rename(R, b"a", R, b"b", 0, 5)
    assert replaced is b and b.nlink == 0 and b.ctime_ns == 5
    assert ops.lookup(R, b"b") is a and ops.orphans() == [b.ino]
    ops.purge(b.ino)


def test_rename_over_hard_linked_file(ops):
    a = ops.create(R, b"a", REG, 0, 0, 1)
    b = ops.create(R, b"b", REG, 0, 0, 1)
    ops.link(b.ino, R, b"b2", 2)
    assert ops.rename(R, b"a", R, b"b", 0, 3) is b and b.nlink == 1
    assert ops.orphans() == [] and ops.lookup(R, b"b") is a


def test_rename_same_inode_is_noop(ops):
    a = ops.create(R, b"a", REG, 0, 0, 1)
    ops.link(a.ino, R, b"h", 2)
    ops.take_pending()
    assert ops.rename(R, b"a", R, b"h", 0, 3) is None
    assert ops.rename(R, b"a", R, b"a", 0, 3) is None
    assert ops.rename(R, b"a", R, b"h", RENAME_EXCHANGE, 3) is None
    assert ops.pending == [] and a.nlink == 2


def test_rename_dir_between_parents(ops):
    p1 = ops.mkdir(R, b"p1", 0o755, 0, 0, 1)
    p2 = ops.mkdir(R, b"p2", 0o755, 0, 0, 1)
    d = ops.mkdir(p1.ino, b"d", 0o755, 0, 0, 1)
    assert (p1.nlink, p2.nlink) == (3, 2)
    ops.rename(p1.ino, b"d", p2.ino, b"e", 0, 5)
    assert (p1.nlink, p2.nlink) == (2, 3)
    assert ops.lookup(d.ino, b"..") is p2
    assert p1.mtime_ns == p2.mtime_ns == p1.ctime_ns == p2.ctime_ns == d.ctime_ns == 5


def test_rename_dir_over_empty_dir(ops):
    p1 = ops.mkdir(R, b"p1", 0o755, 0, 0, 1)
    p2 = ops.mkdir(R, b"p2", 0o755, 0, 0, 1)
    d = ops.mkdir(p1.ino, b"d", 0o755, 0, 0, 1)
    t = ops.mkdir(p2.ino, b"t", 0o755, 0, 0, 1)
    assert ops.rename(p1.ino, b"d", p2.ino, b"t", 0, 5) is None
    assert t.ino not in ops.state.inodes and ops.lookup(p2.ino, b"t") is d
    assert (p1.nlink, p2.nlink) == (2, 3)
    # same parent
    e = ops.mkdir(R, b"e", 0o755, 0, 0, 6)
    ops.rename(R, b"e", R, b"p1", 0, 7)
    assert ops.lookup(R, b"p1") is e and ops.getattr(R).nlink == 4


def test_rename_errors(ops):
    d = ops.mkdir(R, b"d", 0o755, 0, 0, 1)
    sub = ops.mkdir(d.ino, b"sub", 0o755, 0, 0, 1)
    full = ops.mkdir(R, b"full", 0o755, 0, 0, 1)
    ops.create(full.ino, b"x", REG, 0, 0, 1)
    ops.create(R, b"f", REG, 0, 0, 1)
    ops.create(R, b"g", REG, 0, 0, 1)
    ops.take_pending()
    err(errno.ENOENT, ops.rename, R, b"missing", R, b"z", 0, 2)
    err(errno.ENOENT, ops.rename, R, b"f", 999, b"z", 0, 2)
    err(errno.ENOTDIR, ops.rename, R, b"d", R, b"f", 0, 2)          # dir over non-dir
    err(errno.EISDIR, ops.rename, R, b"f", R, b"d", 0, 2)           # non-dir over dir
    err(errno.ENOTEMPTY, ops.rename, R, b"d", R, b"full", 0, 2)
    err(errno.EINVAL, ops.rename, R, b"d", sub.ino, b"z", 0, 2)     # into own subtree
    err(errno.EINVAL, ops.rename, R, b"d", d.ino, b"z", 0, 2)       # into itself
    err(errno.ENOTEMPTY, ops.rename, d.ino, b"sub", R, b"d", 0, 2)  # over own ancestor
    err(errno.EEXIST, ops.rename, R, b"f", R, b"g", RENAME_NOREPLACE, 2)
    err(errno.EEXIST, ops.rename, R, b"f", R, b"f", RENAME_NOREPLACE, 2)
    err(errno.ENOENT, ops.rename, R, b"f", R, b"nope", RENAME_EXCHANGE, 2)
    err(errno.EINVAL, ops.rename, R, b"f", R, b"g", RENAME_EXCHANGE | RENAME_NOREPLACE, 2)
    err(errno.EINVAL, ops.rename, R, b"f", R, b"g", 4, 2)
    err(errno.EBUSY, ops.rename, R, b".", R, b"z", 0, 2)
    err(errno.EBUSY, ops.rename, R, b"f", R, b"..", 0, 2)
    err(errno.ENAMETOOLONG, ops.rename, R, b"f", R, b"z" * 256, 0, 2)
    err(errno.EINVAL, ops.rename, R, b"f", R, b"", 0, 2)
    assert ops.pending == []


def test_rename_noreplace_to_free_name(ops):
    a = ops.create(R, b"a", REG, 0, 0, 1)
    ops.rename(R, b"a", R, b"b", RENAME_NOREPLACE, 2)
    assert ops.lookup(R, b"b") is a


def test_rename_exchange_file_and_dir_across_parents(ops):
    p1 = ops.mkdir(R, b"p1", 0o755, 0, 0, 1)
    p2 = ops.mkdir(R, b"p2", 0o755, 0, 0, 1)
    f = ops.create(p1.ino, b"f", REG, 0, 0, 1)
    d = ops.mkdir(p2.ino, b"d", 0o755, 0, 0, 1)
    assert ops.rename(p1.ino, b"f", p2.ino, b"d", RENAME_EXCHANGE, 5) is None
    assert ops.lookup(p1.ino, b"f") is d and ops.lookup(p2.ino, b"d") is f
    assert (p1.nlink, p2.nlink) == (3, 2)
    assert ops.lookup(d.ino, b"..") is p1
    assert f.ctime_ns == d.ctime_ns == p1.mtime_ns == p2.mtime_ns == 5


def test_rename_exchange_two_dirs_same_parent(ops):
    a = ops.mkdir(R, b"a", 0o755, 0, 0, 1)
    b = ops.mkdir(R, b"b", 0o755, 0, 0, 1)
    ops.create(a.ino, b"inside", REG, 0, 0, 1)
    ops.rename(R, b"a", R, b"b", RENAME_EXCHANGE, 2)
    assert ops.lookup(R, b"a") is b and ops.lookup(R, b"b") is a
    assert ops.lookup(a.ino, b"..").ino == R and ops.lookup(b.ino, b"..").ino == R
    assert ops.getattr(R).nlink == 4


def test_rename_exchange_with_own_ancestor_is_einval(ops):
    a = ops.mkdir(R, b"a", 0o755, 0, 0, 1)
    ops.mkdir(a.ino, b"b", 0o755, 0, 0, 1)
    err(errno.EINVAL, ops.rename, R, b"a", a.ino, b"b", RENAME_EXCHANGE, 2)
    err(errno.EINVAL, ops.rename, a.ino, b"b", R, b"a", RENAME_EXCHANGE, 2)


def test_readdir_cookies_are_stable(ops):
    names = [b"n%d" % i for i in range(6)]
    for n in names:
        ops.create(R, n, REG, 0, 0, 1)
    first = ops.readdir(R, 0)
    assert [n for n, _, _ in first] == names
    resume = first[2][2]
    ops.unlink(R, b"n1", 2)            # already listed: no effect on the rest
    ops.create(R, b"new", REG, 0, 0, 2)
    ops.unlink(R, b"n4", 2)
    rest = ops.readdir(R, resume)
    assert [n for n, _, _ in rest] == [b"n3", b"n5", b"new"]
    assert all(c > resume for _, _, c in rest)
    assert ops.readdir(R, rest[-1][2]) == []
    f = ops.lookup(R, b"n0")
    err(errno.ENOTDIR, ops.readdir, f.ino, 0)


# ----------------------------------------------------------------- setattr
def test_setattr_fields(ops):
    f = ops.create(R, b"f", stat.S_IFREG | 0o644, 0, 0, 1)
    n = ops.setattr(f.ino, 10, mode=stat.S_IFDIR | 0o4711, uid=3, gid=4, atime_ns=-5, mtime_ns=7)
    assert n is f and f.mode == stat.S_IFREG | 0o4711       # file type kept
    assert (f.uid, f.gid, f.atime_ns, f.mtime_ns, f.ctime_ns) == (3, 4, -5, 7, 10)
    ops.setattr(f.ino, 11)
    assert f.ctime_ns == 11 and f.mtime_ns == 7
    err(errno.ENOENT, ops.setattr, 999, 1, mode=0)


def test_setattr_size(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    d = ops.mkdir(R, b"d", 0o755, 0, 0, 1)
    ops.take_pending()
    ops.setattr(f.ino, 5, size=100)
    assert f.size == 100 and f.mtime_ns == f.ctime_ns == 5
    assert [r[0] for r in ops.take_pending()] == [INODE]          # growing: no TRUNC
    ops.setattr(f.ino, 6, size=100)
    assert f.mtime_ns == 5 and f.ctime_ns == 6                     # unchanged size
    ops.setattr(f.ino, 7, size=50)
    assert f.size == 50 and f.mtime_ns == f.ctime_ns == 7          # shrinking too
    ops.setattr(f.ino, 8, size=20, mtime_ns=3)
    assert f.size == 20 and f.mtime_ns == 3                        # explicit mtime wins
    recs = ops.take_pending()
    assert [r[0] for r in recs] == [INODE, TRUNC, INODE, TRUNC, INODE] and recs[3] == [TRUNC, f.ino, 20]
    err(errno.EISDIR, ops.setattr, d.ino, 8, size=0)
    err(errno.EINVAL, ops.setattr, f.ino, 8, size=-1)
    assert ops.usage() == (3, 20)


def test_trunc_drops_and_clips_blocks(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.note_write(f.ino, 4 * BS, 2)
    for i in range(4):
        ops.set_block(f.ino, i, BlockRef(H(i), BS))
    ops.setattr(f.ino, 3, size=BS + 5)
    assert ops.state.blocks[f.ino] == {0: BlockRef(H(0), BS), 1: BlockRef(H(1), 5)}
    ops.setattr(f.ino, 4, size=BS + 9)                     # growing never restores bytes
    assert ops.state.blocks[f.ino][1].length == 5
    ops.setattr(f.ino, 5, size=BS)                          # block 1 starts at size: dropped
    assert ops.state.blocks[f.ino] == {0: BlockRef(H(0), BS)}
    ops.setattr(f.ino, 6, size=3)
    assert ops.state.blocks[f.ino] == {0: BlockRef(H(0), 3)}
    ops.setattr(f.ino, 7, size=0)
    assert f.ino not in ops.state.blocks


def test_trunc_keeps_shorter_last_block(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.note_write(f.ino, BS + 4, 2)
    ops.set_block(f.ino, 1, BlockRef(H(1), 4))
    ops.setattr(f.ino, 3, size=BS + 10)
    ops.setattr(f.ino, 3, size=BS + 6)
    assert ops.state.blocks[f.ino] == {1: BlockRef(H(1), 4)}


# -------------------------------------------------------- writes / pending
def test_note_write_is_coalesced_into_one_inode_record(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.take_pending()
    for i in range(1, 50):
        ops.note_write(f.ino, i * 10, 100 + i)
    assert ops.pending == [] and ops.attr_dirty == {f.ino}
    assert f.size == 490 and f.mtime_ns == f.ctime_ns == 149
    ops.note_write(f.ino, 5, 200)                         # writes never shrink
    assert f.size == 490 and ops.usage() == (2, 490)
    recs = ops.take_pending()
    assert recs == [f.to_record()]
    assert ops.take_pending() == [] and not ops.attr_dirty
    err(errno.ENOENT, ops.note_write, 999, 1, 1)


def test_pending_record_follows_other_records(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    g = ops.create(R, b"g", REG, 0, 0, 1)
    committed = ops.take_pending()
    ops.note_write(f.ino, 30, 5)
    ops.note_write(g.ino, 10, 5)
    ops.set_block(f.ino, 0, BlockRef(H(0), 16))
    ops.setxattr(g.ino, b"user.k", b"v", 6)            # INODE of g emitted: g settled
    assert ops.attr_dirty == {f.ino}
    recs = ops.take_pending()
    assert recs[-1] == f.to_record()
    assert sum(1 for r in recs if r[0] == INODE and r[1] == g.ino) == 1
    assert replay(ops, committed + recs) == ops.state


def test_setattr_after_write_settles_dirty_attrs(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.take_pending()
    ops.note_write(f.ino, 100, 2)
    ops.setattr(f.ino, 3, mode=0o600)
    assert not ops.attr_dirty
    assert [r[0] for r in ops.take_pending()] == [INODE]


def test_set_block_on_deleted_inode_is_ignored(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.unlink(R, b"f", 2)
    ops.purge(f.ino)
    ops.take_pending()
    ops.set_block(f.ino, 0, BlockRef(H(0), 1))
    assert ops.pending == [] and f.ino not in ops.state.blocks


def test_reapply_makes_records_pending_again(ops):
    ops.create(R, b"f", REG, 0, 0, 1)
    recs = ops.take_pending()
    other = MetaOps(MetaState.from_records(BS, new_volume_records(100, uid=5, gid=6)))
    other.reapply(recs)
    assert other.state == ops.state and other.pending == recs


# ------------------------------------------------------------------ xattrs
def test_xattrs(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.setxattr(f.ino, b"user.b", b"2", 5)
    ops.setxattr(f.ino, b"user.a", b"1", 6)
    ops.setxattr(f.ino, b"user.a", b"", 7)
    assert f.ctime_ns == 7 and f.mtime_ns == 1
    assert ops.getxattr(f.ino, b"user.a") == b"" and ops.listxattr(f.ino) == [b"user.a", b"user.b"]
    ops.removexattr(f.ino, b"user.a", 8)
    assert ops.listxattr(f.ino) == [b"user.b"] and f.ctime_ns == 8
    err(errno.ENODATA, ops.getxattr, f.ino, b"user.a")
    err(errno.ENODATA, ops.removexattr, f.ino, b"user.a", 9)
    err(errno.ERANGE, ops.setxattr, f.ino, b"n" * 256, b"", 9)
    err(errno.ERANGE, ops.setxattr, f.ino, b"", b"", 9)
    err(errno.E2BIG, ops.setxattr, f.ino, b"user.big", b"v" * 65537, 9)
    ops.setxattr(f.ino, b"n" * 255, b"v" * 65536, 9)
    err(errno.ENOENT, ops.setxattr, 999, b"user.a", b"", 9)
    err(errno.ENOENT, ops.listxattr, 999)
    kinds = [r[0] for r in ops.take_pending()]
    assert XATTR in kinds and XATTR_DEL in kinds


def test_xattrs_go_with_the_inode(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.setxattr(f.ino, b"user.a", b"1", 2)
    ops.unlink(R, b"f", 3)
    ops.purge(f.ino)
    g = ops.create(R, b"g", REG, 0, 0, 4)
    assert ops.listxattr(g.ino) == []


# ------------------------------------------------------------------- usage
def test_usage_counts_regular_files_only(ops):
    f = ops.create(R, b"f", REG, 0, 0, 1)
    ops.symlink(R, b"l", b"abcdef", 0, 0, 1)
    ops.mkdir(R, b"d", 0o755, 0, 0, 1)
    ops.note_write(f.ino, 1000, 2)
    assert ops.usage() == (4, 1000)
    ops.unlink(R, b"f", 3)
    assert ops.usage() == (4, 1000)          # orphan still holds its data
    ops.purge(f.ino)
    assert ops.usage() == (3, 0)


# ------------------------------------------------------------------- state
def test_snapshot_round_trip(ops):
    d = ops.mkdir(R, b"d", 0o755, 0, 0, 1)
    f = ops.create(d.ino, b"f", REG, 0, 0, 1)
    ops.link(f.ino, R, b"h", 1)
    ops.note_write(f.ino, 20, 2)
    ops.set_block(f.ino, 1, BlockRef(H(9), 4))
    ops.setxattr(d.ino, b"user.x", b"y", 3)
    ops.symlink(d.ino, b"s", b"f", 0, 0, 3)
    snap = list(ops.state.snapshot_records())
    back = MetaState.from_records(BS, snap)
    assert back == ops.state and back.dir_parent == ops.state.dir_parent
    assert back.reg_bytes == ops.state.reg_bytes and back.next_ino == ops.state.next_ino
    assert check_state(back) == []


def test_apply_is_idempotent(ops):
    d = ops.mkdir(R, b"d", 0o755, 0, 0, 1)
    f = ops.create(d.ino, b"f", REG, 0, 0, 1)
    ops.note_write(f.ino, 40, 2)
    ops.set_block(f.ino, 2, BlockRef(H(2), 8))
    ops.setattr(f.ino, 3, size=35)
    recs = ops.take_pending()
    again = MetaState.from_records(BS, new_volume_records(100, uid=5, gid=6) + recs)
    again.apply_all(recs)
    assert again == ops.state


def test_state_equality_sees_differences(ops):
    other = MetaState.from_records(BS, new_volume_records(100, uid=5, gid=6))
    assert other == ops.state
    ops.setxattr(R, b"user.a", b"b", 5)
    assert other != ops.state


def test_check_state_reports_problems():
    s = MetaState.from_records(BS, new_volume_records(1))
    s.apply([INODE, 5, REG, 0, 0, 2, 3, 0, 0, 0, 0, None])     # nlink 2, no entry: unreachable
    s.apply([DENT, R, b"ghost", 9, 1])                           # dangling entry
    s.apply([BLOCK, 5, 3, H(1), 4])                              # beyond size
    s.apply([INODE, 6, stat.S_IFDIR | 0o755, 0, 0, 2, 0, 0, 0, 0, 0, None])
    s.apply([INODE, 7, stat.S_IFDIR | 0o755, 0, 0, 3, 0, 0, 0, 0, 0, None])
    s.apply([DENT, 6, b"b", 7, 1])
    s.apply([DENT, 7, b"a", 6, 1])                               # 6 <-> 7 cycle
    s.apply([INODE, 8, stat.S_IFLNK | 0o777, 0, 0, 1, 0, 0, 0, 0, 0, None])
    s.apply([DENT, R, b"l", 8, 2])
    text = "\n".join(check_state(s))
    assert "missing inode 9" in text
    assert "inode 5 has nlink 2 but 0 entries" in text
    assert "inode 5 block 3" in text and "beyond size" in text
    assert "directory cycle" in text
    assert "inode 5 (nlink 2) is not reachable" in text
    assert "symlink 8" in text
    assert "directory 6 has nlink 2, expected 3" in text
    assert find_orphans(s) == []


def test_check_state_flags_blocks_on_non_regular_files():
    s = MetaState.from_records(BS, new_volume_records(1))
    s.apply([BLOCK, R, 0, H(0), 1])
    assert any("not a regular file" in p for p in check_state(s))
    t = MetaState(BS)
    assert any("root" in p for p in check_state(t))


def test_readdir_limit_and_listing_cache(ops):
    for i in range(10):
        ops.create(R, b"f%d" % i, REG, 0, 0, 1)
    got, after = [], 0
    while True:
        part = ops.readdir(R, after, limit=3)
        if not part:
            break
        assert len(part) <= 3
        got += [n for n, _, _ in part]
        after = part[-1][2]
        if after == 6:                      # changes in the middle of a listing
            ops.rename(R, b"f0", R, b"moved", 0, 2)
            ops.unlink(R, b"f8", 2)
            ops.create(R, b"late", REG, 0, 0, 2)
    assert got == [b"f%d" % i for i in range(6)] + [b"f6", b"f7", b"f9", b"moved", b"late"]
    assert ops.readdir(R, 0, limit=0) == []
    # the cache is bounded
    for i in range(80):
        d = ops.mkdir(R, b"d%d" % i, 0o755, 0, 0, 3)
        assert ops.readdir(d.ino, 0) == []
    assert len(ops._listings) <= 64
