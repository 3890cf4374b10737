"""POSIX namespace operations on a `MetaState`, as journal records.

Every operation validates first and only then emits records; `_emit` applies
each record to the state and appends it to `pending`. Hence a failed
operation changes nothing, and the state always equals a replay of every
record emitted so far (committed segments + `pending`). The one exception is
`note_write`, which runs on every FUSE write: it updates size and times in
place and only remembers the inode in `attr_dirty`; `take_pending` pays the
debt with one INODE record per such inode.

Errors follow Linux (rename(2), unlink(2), setxattr(2), ...), because the
kernel passes them straight to applications.
"""
from __future__ import annotations

import errno
from bisect import bisect_right
from collections.abc import Iterable
from stat import S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, S_IFSOCK, S_ISGID

from fsd.meta.records import (
    DENT,
    DENT_DEL,
    HOLE,
    I_ATIME,
    I_CTIME,
    I_GID,
    I_MODE,
    I_MTIME,
    I_NLINK,
    I_SIZE,
    I_UID,
    INODE,
    INODE_DEL,
    NAME_MAX,
    TRUNC,
    XATTR,
    XATTR_DEL,
    XATTR_SIZE_MAX,
    Record,
)
from fsd.meta.state import ROOT_INO, S_FMT, BlockRef, Inode, MetaState, in_range

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
SYMLINK_MAX = 4095          # PATH_MAX - 1
_NODE_TYPES = frozenset((S_IFREG, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK))
_DOTS = (b".", b"..")
_LISTINGS_KEPT = 64         # directories whose sorted listing is cached


class FsError(Exception):
    """An operation failed with `errno` (what FUSE returns to the caller)."""

    def __init__(self, err: int, detail: str | None = None) -> None:
        super().__init__(err, detail)
        self.errno = err
        self.detail = detail

    def __str__(self) -> str:
        name = errno.errorcode.get(self.errno, str(self.errno))
        return f"{name}: {self.detail}" if self.detail else name


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise FsError(errno.ENAMETOOLONG)
    if not name or b"/" in name or b"\0" in name:
        raise FsError(errno.EINVAL, f"invalid file name {name!r}")


def _check_new_name(name: bytes) -> None:
    """A name about to be created: "." and ".." always exist (EEXIST)."""
    _check_name(name)
    if name in _DOTS:
        raise FsError(errno.EEXIST)


class MetaOps:
    __slots__ = ("state", "pending", "attr_dirty", "_listings")

    def __init__(self, state: MetaState) -> None:
        self.state = state
        self.pending: list[Record] = []
        self.attr_dirty: set[int] = set()
        # directory -> (sorted cookies, [(cookie, name)]): FUSE reads a large
        # directory in many small readdir calls; sorting it for each would be
        # quadratic. Dropped by _emit whenever the directory changes (once a
        # MetaOps exists, entries change only through it).
        self._listings: dict[int, tuple[list[int], list[tuple[int, bytes]]]] = {}

    # ------------------------------------------------------------ plumbing
    def _emit(self, rec: Record) -> None:
        self.state.apply(rec)
        self.pending.append(rec)
        t = rec[0]
        if t in (INODE, INODE_DEL):
            # An INODE record is built from the current attributes (or
            # replaces them), and a deleted inode is owed nothing.
            self.attr_dirty.discard(rec[1])
        if (t in (DENT, DENT_DEL, INODE_DEL)) and self._listings:
            self._listings.pop(rec[1], None)

    def reapply(self, recs: Iterable[Record]) -> None:
        """Re-emit records recorded earlier (local journal recovery): they
        become pending again, exactly as if the operations had just run."""
        for rec in recs:
            self._emit(rec)

    def take_pending(self) -> list[Record]:
        """The records to commit now, ending with the INODE records owed by
        `note_write`; clears both."""
        out = self.pending
        if self.attr_dirty:
            inodes = self.state.inodes
            for ino in sorted(self.attr_dirty):
                n = inodes.get(ino)
                if n is not None:
                    out.append(n.to_record())
            self.attr_dirty = set()
        self.pending = []
        return out

    def _node(self, ino: int) -> Inode:
        n = self.state.inodes.get(ino)
        if n is None:
            raise FsError(errno.ENOENT, f"no inode {ino}")
        return n

    def _dir(self, ino: int) -> Inode:
        n = self._node(ino)
        if n.mode & S_FMT != S_IFDIR:
            raise FsError(errno.ENOTDIR, f"inode {ino} is not a directory")
        return n

    def _touch(self, n: Inode, now_ns: int, dnlink: int = 0, mtime: bool = True) -> None:
        """Emit `n` with ctime (and mtime) = now and nlink adjusted."""
        r = n.to_record()
        r[I_NLINK] = n.nlink + dnlink
        r[I_CTIME] = now_ns
        if mtime:
            r[I_MTIME] = now_ns
        self._emit(r)

    def _add_entry(self, parent: int, name: bytes, ino: int) -> None:
        self._emit([DENT, parent, name, ino, self.state.next_cookie.get(parent, 1)])

    def _is_within(self, ino: int, top: int) -> bool:
        """Is directory `ino` equal to `top` or below it?"""
        parents = self.state.dir_parent
        for _ in range(len(self.state.inodes) + 1):   # bound: no loop on corrupt state
            if ino == top:
                return True
            if ino == ROOT_INO:
                return False
            p = parents.get(ino)
            if p is None:
                return False
            ino = p
        return False

    def _new_inode(self, parent: Inode, name: bytes, mode: int, uid: int, gid: int, now_ns: int,
                   nlink: int, size: int = 0, rdev: int = 0, target: bytes | None = None) -> Inode:
        if parent.mode & S_ISGID:          # BSD group semantics of a setgid directory
            gid = parent.gid
            if mode & S_FMT == S_IFDIR:
                mode |= S_ISGID
        ino = self.state.next_ino
        self._emit([INODE, ino, mode, uid, gid, nlink, size, now_ns, now_ns, now_ns, rdev, target])
        self._add_entry(parent.ino, name, ino)
        self._touch(parent, now_ns, 1 if mode & S_FMT == S_IFDIR else 0)
        return self.state.inodes[ino]

    def _free_slot(self, parent: int, name: bytes) -> Inode:
        p = self._dir(parent)
        _check_new_name(name)
        if name in self.state.entries[parent]:
            raise FsError(errno.EEXIST)
        return p

    # ------------------------------------------------------------- lookups
    def lookup(self, parent: int, name: bytes) -> Inode:
        p = self._dir(parent)
        _check_name(name)
        if name == b".":
            return p
        if name == b"..":
            if parent == ROOT_INO:
                return p
            return self._node(self.state.dir_parent.get(parent, 0))
        e = self.state.entries[parent].get(name)
        if e is None:
            raise FsError(errno.ENOENT)
        return self._node(e[0])

    def getattr(self, ino: int) -> Inode:
        return self._node(ino)

    def readdir(self, ino: int, after_cookie: int,
                limit: int | None = None) -> list[tuple[bytes, Inode, int]]:
        """Entries with a cookie above `after_cookie`, in cookie order (at
        most `limit` of them). Entries keep their cookie for life, so a
        listing resumed at a cookie neither repeats nor skips entries that
        were not renamed meanwhile. A directory removed while open lists as
        empty (as on Linux)."""
        n = self.state.inodes.get(ino)
        if n is None:
            return []
        if n.mode & S_FMT != S_IFDIR:
            raise FsError(errno.ENOTDIR)
        m = self.state.entries[ino]
        listing = self._listings.get(ino)
        if listing is None:
            items = sorted((cookie, name) for name, (_, cookie) in m.items())
            listing = ([c for c, _ in items], items)
            if len(self._listings) >= _LISTINGS_KEPT:
                del self._listings[next(iter(self._listings))]
            self._listings[ino] = listing
        cookies, items = listing
        start = bisect_right(cookies, after_cookie)
        stop = len(items) if limit is None else min(len(items), start + max(limit, 0))
        inodes = self.state.inodes
        out = []
        for i in range(start, stop):
            cookie, name = items[i]
            child = inodes.get(m[name][0])
            if child is not None:
                out.append((name, child, cookie))
        return out

    def usage(self) -> tuple[int, int]:
        """(number of inodes, sum of sizes of regular files), for statfs."""
        return len(self.state.inodes), self.state.reg_bytes

    def orphans(self) -> list[int]:
        """Unlinked inodes kept for open files (nlink 0), to purge on close
        or, after a crash, at mount."""
        return [ino for ino, n in self.state.inodes.items() if n.nlink == 0]

    # ------------------------------------------------------------ creating
    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int, now_ns: int,
               rdev: int = 0) -> Inode:
        """Any non-directory, non-symlink node; regular file if mode has no type."""
        p = self._free_slot(parent, name)
        fmt = mode & S_FMT or S_IFREG
        if fmt not in _NODE_TYPES:
            raise FsError(errno.EINVAL, f"cannot create file type {fmt:#o} with create/mknod")
        rdev = rdev if fmt in (S_IFCHR, S_IFBLK) else 0
        return self._new_inode(p, name, fmt | (mode & 0o7777), uid, gid, now_ns, 1, rdev=rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int, now_ns: int) -> Inode:
        p = self._free_slot(parent, name)
        return self._new_inode(p, name, S_IFDIR | (mode & 0o7777), uid, gid, now_ns, 2)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int,
                now_ns: int) -> Inode:
        p = self._free_slot(parent, name)
        if not target:
            raise FsError(errno.ENOENT, "empty symlink target")
        if len(target) > SYMLINK_MAX:
            raise FsError(errno.ENAMETOOLONG)
        if b"\0" in target:
            raise FsError(errno.EINVAL)
        return self._new_inode(p, name, S_IFLNK | 0o777, uid, gid, now_ns, 1,
                               size=len(target), target=bytes(target))

    def link(self, ino: int, new_parent: int, new_name: bytes, now_ns: int) -> Inode:
        n = self._node(ino)
        if n.mode & S_FMT == S_IFDIR:
            raise FsError(errno.EPERM, "hard link to a directory")
        p = self._free_slot(new_parent, new_name)
        if n.nlink == 0:
            raise FsError(errno.ENOENT, f"inode {ino} was unlinked")
        self._touch(n, now_ns, 1, mtime=False)
        self._add_entry(new_parent, new_name, ino)
        self._touch(p, now_ns)
        return n

    # ------------------------------------------------------------ removing
    def unlink(self, parent: int, name: bytes, now_ns: int) -> Inode:
        """Remove a non-directory entry. The inode stays, with nlink 0 if this
        was its last name, until `purge` (open files keep their data)."""
        p = self._dir(parent)
        _check_name(name)
        if name in _DOTS:
            raise FsError(errno.EISDIR)
        e = self.state.entries[parent].get(name)
        if e is None:
            raise FsError(errno.ENOENT)
        n = self._node(e[0])
        if n.mode & S_FMT == S_IFDIR:
            raise FsError(errno.EISDIR)
        self._emit([DENT_DEL, parent, name])
        self._touch(n, now_ns, -1, mtime=False)
        self._touch(p, now_ns)
        return n

    def rmdir(self, parent: int, name: bytes, now_ns: int) -> None:
        p = self._dir(parent)
        _check_name(name)
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        e = self.state.entries[parent].get(name)
        if e is None:
            raise FsError(errno.ENOENT)
        child = e[0]
        n = self._node(child)
        if n.mode & S_FMT != S_IFDIR:
            raise FsError(errno.ENOTDIR)
        if child == ROOT_INO:
            raise FsError(errno.EBUSY)
        if self.state.entries.get(child):
            raise FsError(errno.ENOTEMPTY)
        self._emit([DENT_DEL, parent, name])
        self._emit([INODE_DEL, child])
        self._touch(p, now_ns, -1)

    def purge(self, ino: int) -> None:
        """Delete an unlinked inode for good (its last open handle closed)."""
        n = self.state.inodes.get(ino)
        if n is None:
            return
        if n.nlink > 0:
            raise ValueError(f"purge of inode {ino}, which still has {n.nlink} link(s)")
        self._emit([INODE_DEL, ino])

    # ------------------------------------------------------------ renaming
    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int, now_ns: int) -> Inode | None:
        """rename(2)/renameat2(2). Returns the non-directory inode whose name
        was replaced (one link fewer; purge it if it reached 0 and is not
        open), else None."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, f"rename flags {flags:#x}")
        op = self._dir(old_parent)
        np_ = self._dir(new_parent)
        _check_name(old_name)
        _check_name(new_name)
        if old_name in _DOTS or new_name in _DOTS:
            raise FsError(errno.EBUSY)
        entries = self.state.entries
        e = entries[old_parent].get(old_name)
        if e is None:
            raise FsError(errno.ENOENT)
        src = self._node(e[0])
        d = entries[new_parent].get(new_name)
        dst = self._node(d[0]) if d is not None else None
        exchange = flags & RENAME_EXCHANGE
        if dst is not None and flags & RENAME_NOREPLACE:
            raise FsError(errno.EEXIST)
        if dst is None and exchange:
            raise FsError(errno.ENOENT)
        src_dir = src.mode & S_FMT == S_IFDIR
        dst_dir = dst is not None and dst.mode & S_FMT == S_IFDIR
        if src_dir and self._is_within(new_parent, src.ino):
            raise FsError(errno.EINVAL, "cannot move a directory into itself")
        if dst_dir and self._is_within(old_parent, dst.ino):  # type: ignore[union-attr]
            raise FsError(errno.EINVAL if exchange else errno.ENOTEMPTY)
        if dst is not None and dst.ino == src.ino:
            return None                     # same inode: POSIX says do nothing
        if exchange:
            self._exchange(op, old_name, src, np_, new_name, dst, now_ns)  # type: ignore[arg-type]
            return None
        if dst is not None:
            if src_dir and not dst_dir:
                raise FsError(errno.ENOTDIR)
            if dst_dir and not src_dir:
                raise FsError(errno.EISDIR)
            if dst_dir and entries.get(dst.ino):
                raise FsError(errno.ENOTEMPTY)
        # DENT_DEL before DENT: see MetaState._dent_del.
        self._emit([DENT_DEL, old_parent, old_name])
        self._add_entry(new_parent, new_name, src.ino)
        self._touch(src, now_ns, mtime=False)
        replaced = None
        np_delta = 0
        if dst is not None:
            if dst_dir:
                self._emit([INODE_DEL, dst.ino])
                np_delta -= 1
            else:
                self._touch(dst, now_ns, -1, mtime=False)
                replaced = dst
        if src_dir and old_parent != new_parent:
            np_delta += 1
            self._touch(op, now_ns, -1)
        elif old_parent != new_parent:
            self._touch(op, now_ns)
        self._touch(np_, now_ns, np_delta)
        return replaced

    def _exchange(self, op: Inode, old_name: bytes, src: Inode, np_: Inode, new_name: bytes,
                  dst: Inode, now_ns: int) -> None:
        self._add_entry(op.ino, old_name, dst.ino)
        self._add_entry(np_.ino, new_name, src.ino)
        self._touch(src, now_ns, mtime=False)
        self._touch(dst, now_ns, mtime=False)
        if op.ino == np_.ino:
            self._touch(op, now_ns)
            return
        # old parent loses src and gains dst, new parent the reverse
        delta = (dst.mode & S_FMT == S_IFDIR) - (src.mode & S_FMT == S_IFDIR)
        self._touch(op, now_ns, delta)
        self._touch(np_, now_ns, -delta)

    # ---------------------------------------------------------- attributes
    def setattr(self, ino: int, now_ns: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime_ns: int | None = None,
                mtime_ns: int | None = None) -> Inode:
        n = self._node(ino)
        r = n.to_record()
        if size is not None:
            fmt = n.mode & S_FMT
            if fmt == S_IFDIR:
                raise FsError(errno.EISDIR)
            if fmt != S_IFREG or size < 0:
                raise FsError(errno.EINVAL)
            if size != n.size:
                r[I_SIZE] = size
                r[I_MTIME] = now_ns
        if mode is not None:
            r[I_MODE] = (n.mode & S_FMT) | (mode & 0o7777)
        if uid is not None:
            r[I_UID] = uid
        if gid is not None:
            r[I_GID] = gid
        if atime_ns is not None:
            r[I_ATIME] = atime_ns
        if mtime_ns is not None:
            r[I_MTIME] = mtime_ns
        r[I_CTIME] = now_ns
        if size is not None and size < n.size:
            self._emit([TRUNC, ino, size])
        self._emit(r)
        return n

    def punch(self, ino: int, first: int, count: int, now_ns: int, *, uncommitted: bool = False) -> Inode:
        """Blocks [first, first+count) of regular file `ino` become holes
        (fallocate PUNCH_HOLE, ZERO_RANGE); size unchanged, mtime/ctime set.
        A HOLE record is emitted only if the range maps something, so a
        filesystem re-trimming free space costs no journal. `uncommitted`:
        the data layer has blocks of the range in commits not yet settled
        here; their BLOCK records will be in the journal before this, so
        the HOLE must be too (or a remount brings the punched data back)."""
        n = self._node(ino)
        if n.mode & S_FMT != S_IFREG:
            raise FsError(errno.EINVAL)
        st = self.state
        if (uncommitted or in_range(st.blocks.get(ino, {}), first, count)
                or in_range(st.patches.get(ino, {}), first, count)):
            self._emit([HOLE, ino, first, count])
        n.mtime_ns = n.ctime_ns = now_ns
        self.attr_dirty.add(ino)
        return n

    def note_write(self, ino: int, end_offset: int, now_ns: int) -> Inode:
        """A write up to `end_offset` happened: grow size, set mtime/ctime.
        In place, no record (hot path); `take_pending` emits the INODE."""
        n = self._node(ino)
        if end_offset > n.size:
            if n.mode & S_FMT == S_IFREG:
                self.state.reg_bytes += end_offset - n.size
            n.size = end_offset
        n.mtime_ns = n.ctime_ns = now_ns
        self.attr_dirty.add(ino)
        return n

    def set_block(self, ino: int, index: int, ref: BlockRef) -> None:
        """Block `index` of `ino` is now stored as `ref` (ignored if the inode
        was deleted meanwhile)."""
        if ino in self.state.inodes:
            self._emit(ref.record(ino, index))

    # -------------------------------------------------------------- xattrs
    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if not name or len(name) > NAME_MAX:
            raise FsError(errno.ERANGE)

    def setxattr(self, ino: int, name: bytes, value: bytes, now_ns: int) -> None:
        n = self._node(ino)
        self._check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise FsError(errno.E2BIG)
        self._emit([XATTR, ino, bytes(name), bytes(value)])
        self._touch(n, now_ns, mtime=False)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        n = self._node(ino)
        self._check_xattr_name(name)
        v = n.xattrs.get(name)
        if v is None:
            raise FsError(errno.ENODATA)
        return v

    def listxattr(self, ino: int) -> list[bytes]:
        return sorted(self._node(ino).xattrs)

    def removexattr(self, ino: int, name: bytes, now_ns: int) -> None:
        n = self._node(ino)
        self._check_xattr_name(name)
        if name not in n.xattrs:
            raise FsError(errno.ENODATA)
        self._emit([XATTR_DEL, ino, name])
        self._touch(n, now_ns, mtime=False)
