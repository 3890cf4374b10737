"""pyfuse3 adapter: translates kernel requests into MetaOps / DataLayer calls.

No decisions live here beyond FUSE plumbing: validation and state changes are
in `fsd.meta.ops`, file contents in `fsd.datapath.data`, durability in `fsd.datapath.committer`.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable

import pyfuse3
import trio

from fsd.datapath.committer import Committer
from fsd.datapath.data import DataLayer
from fsd.meta.ops import FsError, MetaOps
from fsd.meta.state import Inode

log = logging.getLogger("ferry.fuse")

# One writer per volume: nothing changes behind the kernel's back, so long
# cache timeouts are safe and save a round trip per lookup/stat.
ENTRY_TIMEOUT = 300.0
ATTR_TIMEOUT = 300.0
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FALLOCATE_SUPPORTED = frozenset({FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE,
                                 FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE})


def _fuse_errors(fn):
    """Turn FsError into FUSEError; log anything unexpected and return EIO
    instead of crashing the daemon."""
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    wrapper.__name__ = fn.__name__
    return wrapper


class FerryOperations(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, *, ops: MetaOps, data: DataLayer, committer: Committer,
                 volume: str, size_limit: int, holes: bool = False,
                 now_ns: Callable[[], int] = time.time_ns) -> None:
        """`holes`: the volume's format has HOLE records (4, block volumes),
        so fallocate may punch holes."""
        super().__init__()
        self.holes = holes
        self.ops = ops
        self.data = data
        self.committer = committer
        self.volume = volume
        # Set once the kernel's INIT request is answered: only then do
        # per-mount kernel settings stick (the INIT reply resets them).
        self.initialized = trio.Event()
        self.size_limit = size_limit
        self.now_ns = now_ns
        self._next_fh = 1
        self.handles: dict[int, int] = {}       # fh -> ino
        self.open_count: dict[int, int] = {}    # ino -> open handles

    # ----------------------------------------------------------------- helpers
    def _attr(self, ino: Inode) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino.ino
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = ino.mode
        a.st_nlink = ino.nlink
        a.st_uid = ino.uid
        a.st_gid = ino.gid
        a.st_rdev = ino.rdev
        a.st_size = ino.size
        a.st_blksize = 4096
        a.st_blocks = (ino.size + 511) // 512
        a.st_atime_ns = ino.atime_ns
        a.st_mtime_ns = ino.mtime_ns
        a.st_ctime_ns = ino.ctime_ns
        return a

    def _writable(self) -> None:
        if self.committer.fenced:
            raise FsError(errno.EROFS)
        self.committer.note_change()

    def _open_handle(self, ino: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = ino
        self.open_count[ino] = self.open_count.get(ino, 0) + 1
        return fh

    def _maybe_purge(self, ino: int) -> None:
        """Free an unlinked inode once nothing has it open (POSIX: data lives
        until the last close)."""
        node = self.ops.state.inodes.get(ino)
        if node is not None and node.nlink == 0 and not self.open_count.get(ino) and not self.committer.fenced:
            self.ops.purge(ino)
            self.data.drop_inode(ino)

    def init(self) -> None:
        """pyfuse3 calls this while handling FUSE_INIT; libfuse sends the
        reply right after it returns, before any trio task runs again."""
        self.initialized.set()

    # ------------------------------------------------------------- namespace
    @_fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        try:
            return self._attr(self.ops.lookup(parent_inode, name))
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            # Negative entry (st_ino 0): the kernel caches "no such name"; safe
            # because every change to this volume goes through this kernel.
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0
            a.entry_timeout = ENTRY_TIMEOUT
            return a

    @_fuse_errors
    async def getattr(self, inode, ctx=None):
        return self._attr(self.ops.getattr(inode))

    @_fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        self._writable()
        # With writeback_cache the kernel keeps c/mtime itself and sends them
        # here after writing back data; its ctime must win over ours.
        now = attr.st_ctime_ns if fields.update_ctime else self.now_ns()
        kw = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_size:
            kw["size"] = attr.st_size
        node = self.ops.setattr(inode, now, **kw)
        if fields.update_size:
            self.data.truncate(inode, attr.st_size)
        return self._attr(node)

    @_fuse_errors
    async def readlink(self, inode, ctx):
        node = self.ops.getattr(inode)
        if node.target is None:
            raise FsError(errno.EINVAL)
        return node.target

    @_fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._writable()
        return self._attr(self.ops.create(parent_inode, name, mode, ctx.uid, ctx.gid, self.now_ns(), rdev=rdev))

    @_fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        self._writable()
        return self._attr(self.ops.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid, self.now_ns()))

    @_fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        self._writable()
        node = self.ops.unlink(parent_inode, name, self.now_ns())
        self._maybe_purge(node.ino)

    @_fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        self._writable()
        self.ops.rmdir(parent_inode, name, self.now_ns())

    @_fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        self._writable()
        return self._attr(self.ops.symlink(parent_inode, name, target, ctx.uid, ctx.gid, self.now_ns()))

    @_fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._writable()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL)
        replaced = self.ops.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, self.now_ns())
        if replaced is not None:
            self._maybe_purge(replaced.ino)

    @_fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._writable()
        return self._attr(self.ops.link(inode, new_parent_inode, new_name, self.now_ns()))

    # ----------------------------------------------------------------- files
    @_fuse_errors
    async def open(self, inode, flags, ctx):
        node = self.ops.getattr(inode)
        if stat.S_ISDIR(node.mode):
            raise FsError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC) and self.committer.fenced:
            raise FsError(errno.EROFS)
        if flags & os.O_TRUNC and node.size:
            # libfuse asks the kernel for atomic O_TRUNC: the kernel then sends
            # no setattr(size=0) and takes the file as empty; we must make it so.
            self.ops.setattr(inode, self.now_ns(), size=0)
            self.data.truncate(inode, 0)
        # keep_cache: we are the only writer, the page cache stays valid.
        return pyfuse3.FileInfo(fh=self._open_handle(inode), keep_cache=True)

    @_fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._writable()
        node = self.ops.create(parent_inode, name, mode, ctx.uid, ctx.gid, self.now_ns())
        return pyfuse3.FileInfo(fh=self._open_handle(node.ino), keep_cache=True), self._attr(node)

    @_fuse_errors
    async def read(self, fh, off, size):
        return await self.data.read(self.handles[fh], off, size)

    @_fuse_errors
    async def write(self, fh, off, buf):
        self._writable()
        return await self.data.write(self.handles[fh], off, buf, self.now_ns())

    # No flush handler on purpose: pyfuse3 answers FLUSH with ENOSYS once and
    # the kernel stops sending it, saving one round trip per close(). ferry
    # has nothing to do at flush (no POSIX locks; data is committed by fsync
    # or the commit interval), and the kernel still writes dirty pages back
    # and reports their errors inside close() before it would send FLUSH.

    @_fuse_errors
    async def release(self, fh):
        ino = self.handles.pop(fh, None)
        if ino is None:
            return
        n = self.open_count.get(ino, 1) - 1
        if n:
            self.open_count[ino] = n
        else:
            self.open_count.pop(ino, None)
            self._maybe_purge(ino)

    @_fuse_errors
    async def fallocate(self, fh, mode, offset, length):
        """PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE[|KEEP_SIZE]: what the loop
        driver sends for a block volume's discards and write-zeroes. Only
        volumes whose format has HOLE records (4) take them; anything else
        (preallocation) is EOPNOTSUPP, which callers such as posix_fallocate
        handle. (Needs the patched pyfuse3 of deploy/pyfuse3 to be called.)"""
        if not self.holes or mode not in FALLOCATE_SUPPORTED:
            raise FsError(errno.EOPNOTSUPP)
        if offset < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        self._writable()
        ino = self.handles[fh]
        now = self.now_ns()
        if mode & FALLOC_FL_ZERO_RANGE and not mode & FALLOC_FL_KEEP_SIZE \
                and offset + length > self.ops.getattr(ino).size:
            self.ops.setattr(ino, now, size=offset + length)
        await self.data.punch(ino, offset, length, now)

    @_fuse_errors
    async def fsync(self, fh, datasync):
        await self.committer.sync()

    # ----------------------------------------------------------- directories
    @_fuse_errors
    async def opendir(self, inode, ctx):
        node = self.ops.getattr(inode)
        if not stat.S_ISDIR(node.mode):
            raise FsError(errno.ENOTDIR)
        return inode

    @_fuse_errors
    async def readdir(self, fh, start_id, token):
        for name, node, cookie in self.ops.readdir(fh, start_id, limit=256):
            if not pyfuse3.readdir_reply(token, name, self._attr(node), cookie):
                break

    @_fuse_errors
    async def releasedir(self, fh):
        return None

    @_fuse_errors
    async def fsyncdir(self, fh, datasync):
        await self.committer.sync()

    @_fuse_errors
    async def statfs(self, ctx):
        files, used = self.ops.usage()
        s = pyfuse3.StatvfsData()
        s.f_bsize = 4096
        s.f_frsize = 4096
        total = max(self.size_limit // 4096, 1)
        s.f_blocks = total
        s.f_bfree = max(total - (used + 4095) // 4096, 0)
        s.f_bavail = s.f_bfree
        s.f_files = max(files * 2, 1 << 20)
        s.f_ffree = s.f_files - files
        s.f_favail = s.f_ffree
        s.f_namemax = 255
        return s

    # ---------------------------------------------------------------- xattrs
    @_fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        self._writable()
        self.ops.setxattr(inode, name, value, self.now_ns())

    @_fuse_errors
    async def getxattr(self, inode, name, ctx):
        return self.ops.getxattr(inode, name)

    @_fuse_errors
    async def listxattr(self, inode, ctx):
        return self.ops.listxattr(inode)

    @_fuse_errors
    async def removexattr(self, inode, name, ctx):
        self._writable()
        self.ops.removexattr(inode, name, self.now_ns())

    @_fuse_errors
    async def forget(self, inode_list):
        return None
