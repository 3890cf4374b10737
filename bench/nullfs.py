#!/usr/bin/env python3
"""The "pyfuse3 ceiling": a minimal in-memory pyfuse3 filesystem on trio.

    python bench/nullfs.py MOUNTPOINT [--stats FILE]

Mounted with the same FUSE options and capabilities as ferry (fsd/lifecycle/mount.py,
fsd/datapath/fuse_ops.py): writeback_cache, default_permissions, allow_other, noatime,
the same entry/attr timeouts, negative lookup entries, keep_cache on open,
pyfuse3.main(min_tasks=4), and the same per-mount kernel (bdi) tuning after
INIT (fsd/lifecycle/kernel_tuning.py). Everything else is as cheap as it can be: file
contents are bytearrays in a dict, there is no storage, no journal, no
locking. What it measures is the cost of the kernel <-> /dev/fuse <->
libfuse <-> pyfuse3 <-> trio round trip per request, i.e. the best any
pyfuse3 filesystem with these options can do on this machine.

With `--journal FILE`, fsync does the least a filesystem that keeps
fsync-acknowledged writes on local disk must do: it appends the bytes
written to that file since its last fsync to a preallocated journal file
and fdatasyncs it, in a worker thread, with group commit (one fdatasync
covers every fsync waiting when it starts). That is the ceiling for
ferry's `durability=local` fsync (issue 22, item 1): the FUSE round trips
of write and fsync plus one disk flush, and nothing else.

Runs in the foreground until unmounted (`fusermount3 -u MOUNTPOINT`, or
SIGTERM/SIGINT, which unmount). At exit, and on SIGUSR1, it prints one JSON
line with the number of requests per operation so far to stderr, and writes
it to --stats FILE if given (bench/run.py uses it to report FUSE requests
per created file).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import stat
import sys
import time
from collections import Counter
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The same values and the same tuning ferry uses, not copies of them.
from fsd.datapath.fuse_ops import ATTR_TIMEOUT, ENTRY_TIMEOUT  # noqa: E402
from fsd.lifecycle.kernel_tuning import tune_bdi  # noqa: E402
from fsd.options import MountOptions  # noqa: E402

ROOT = pyfuse3.ROOT_INODE


class GroupJournal:
    """Appends with group commit: an fsync waits for the first flush that
    starts after its bytes were queued; one flush covers every waiter."""

    def __init__(self, path: str, size: int = 256 << 20) -> None:
        # Written once with zeros and synced: later fdatasyncs overwrite
        # allocated blocks, so ext4 commits no journal transaction for them
        # (ferry's local journal does the same).
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        chunk = bytes(1 << 20)
        for _ in range(size >> 20):
            os.write(self.fd, chunk)
        os.fsync(self.fd)
        self.size = size
        self.pos = 0
        self.pending: list[bytes] = []
        self.queued = 0           # flush round that will carry what is pending
        self.done = 0             # last flush round completed
        self.busy = False
        self.changed = trio.Condition()
        self.flushes = 0

    async def sync(self, payload: list[bytes]) -> None:
        self.pending.extend(payload)
        mine = self.queued + 1
        async with self.changed:
            while self.done < mine:
                if self.busy:
                    await self.changed.wait()
                    continue
                self.busy = True
                batch, self.pending = b"".join(self.pending), []
                self.queued += 1
                rnd = self.queued
                try:
                    await trio.to_thread.run_sync(self._write, batch)
                finally:
                    self.busy = False
                self.done = rnd
                self.changed.notify_all()

    def _write(self, batch: bytes) -> None:
        if self.pos + len(batch) > self.size:
            self.pos = 0
        os.pwrite(self.fd, batch, self.pos)
        self.pos += len(batch)
        os.fdatasync(self.fd)
        self.flushes += 1


class NullFS(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, journal: GroupJournal | None = None) -> None:
        super().__init__()
        self.journal = journal
        self.unsynced: dict[int, list[bytes]] = {}            # ino -> written since its last fsync (--journal)
        self.initialized = trio.Event()
        self.calls: Counter[str] = Counter()
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {}   # ino -> attributes (returned as is)
        self.data: dict[int, bytearray] = {}                  # ino -> contents (regular files)
        self.dirs: dict[int, dict[bytes, int]] = {}           # ino -> {name: ino} (directories)
        self.opened: dict[int, int] = {}                      # ino -> open handles (fh == ino)
        self.next_ino = ROOT + 1
        now = time.time_ns()
        self._new(ROOT, stat.S_IFDIR | 0o755, 0, 0, now, nlink=2)
        self.dirs[ROOT] = {}

    # ------------------------------------------------------------------ helpers
    def _new(self, ino: int, mode: int, uid: int, gid: int, now: int, nlink: int = 1) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = mode
        a.st_nlink = nlink
        a.st_uid = uid
        a.st_gid = gid
        a.st_blksize = 4096
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = now
        self.attrs[ino] = a
        return a

    def _alloc(self) -> int:
        ino = self.next_ino
        self.next_ino += 1
        return ino

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        try:
            return self.attrs[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _drop(self, ino: int) -> None:
        a = self.attrs.get(ino)
        if a is not None and a.st_nlink == 0 and not self.opened.get(ino):
            del self.attrs[ino]
            self.data.pop(ino, None)

    def init(self) -> None:
        self.calls["init"] += 1
        self.initialized.set()

    # ---------------------------------------------------------------- namespace
    async def lookup(self, parent_inode, name, ctx=None):
        self.calls["lookup"] += 1
        ino = self.dirs[parent_inode].get(name)
        if ino is None:
            a = pyfuse3.EntryAttributes()   # negative entry, cached by the kernel (as ferry does)
            a.st_ino = 0
            a.entry_timeout = ENTRY_TIMEOUT
            return a
        return self.attrs[ino]

    async def getattr(self, inode, ctx=None):
        self.calls["getattr"] += 1
        return self._attr(inode)

    async def setattr(self, inode, attr, fields, fh, ctx):
        self.calls["setattr"] += 1
        a = self._attr(inode)
        if fields.update_size:
            d = self.data.get(inode)
            if d is not None:
                if attr.st_size < len(d):
                    del d[attr.st_size:]
                else:
                    d.extend(bytes(attr.st_size - len(d)))
            a.st_size = attr.st_size
            a.st_blocks = (attr.st_size + 511) // 512
        if fields.update_mode:
            a.st_mode = attr.st_mode
        if fields.update_uid:
            a.st_uid = attr.st_uid
        if fields.update_gid:
            a.st_gid = attr.st_gid
        if fields.update_atime:
            a.st_atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            a.st_mtime_ns = attr.st_mtime_ns
        a.st_ctime_ns = attr.st_ctime_ns if fields.update_ctime else time.time_ns()
        return a

    async def mkdir(self, parent_inode, name, mode, ctx):
        self.calls["mkdir"] += 1
        d = self.dirs[parent_inode]
        if name in d:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino = self._alloc()
        a = self._new(ino, stat.S_IFDIR | (mode & 0o7777), ctx.uid, ctx.gid, time.time_ns(), nlink=2)
        self.dirs[ino] = {}
        d[name] = ino
        self.attrs[parent_inode].st_nlink += 1
        return a

    async def rmdir(self, parent_inode, name, ctx):
        self.calls["rmdir"] += 1
        d = self.dirs[parent_inode]
        ino = d.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if ino not in self.dirs:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if self.dirs[ino]:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del d[name]
        del self.dirs[ino]
        self.attrs[parent_inode].st_nlink -= 1
        self.attrs[ino].st_nlink = 0
        self._drop(ino)

    async def unlink(self, parent_inode, name, ctx):
        self.calls["unlink"] += 1
        d = self.dirs[parent_inode]
        ino = d.pop(name, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        a = self.attrs[ino]
        a.st_nlink -= 1
        a.st_ctime_ns = time.time_ns()
        self._drop(ino)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.calls["rename"] += 1
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        src, dst = self.dirs[parent_inode_old], self.dirs[parent_inode_new]
        ino = src.get(name_old)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        old = dst.get(name_new)
        if old is not None:
            if old in self.dirs:
                raise pyfuse3.FUSEError(errno.EISDIR)
            self.attrs[old].st_nlink -= 1
            self._drop(old)
        del src[name_old]
        dst[name_new] = ino

    # -------------------------------------------------------------------- files
    async def create(self, parent_inode, name, mode, flags, ctx):
        self.calls["create"] += 1
        d = self.dirs[parent_inode]
        if name in d:
            raise pyfuse3.FUSEError(errno.EEXIST)
        ino = self._alloc()
        a = self._new(ino, stat.S_IFREG | (mode & 0o7777), ctx.uid, ctx.gid, time.time_ns())
        self.data[ino] = bytearray()
        d[name] = ino
        self.opened[ino] = 1
        return pyfuse3.FileInfo(fh=ino, keep_cache=True), a

    async def open(self, inode, flags, ctx):
        self.calls["open"] += 1
        if inode in self.dirs:
            raise pyfuse3.FUSEError(errno.EISDIR)
        self.opened[inode] = self.opened.get(inode, 0) + 1
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        self.calls["read"] += 1
        return self.data[fh][off:off + size]

    async def write(self, fh, off, buf):
        self.calls["write"] += 1
        d = self.data[fh]
        n = len(d)
        if off > n:
            d.extend(bytes(off - n))
        end = off + len(buf)
        d[off:end] = buf
        if self.journal is not None:
            self.unsynced.setdefault(fh, []).append(off.to_bytes(8, "little") + bytes(buf))
        if end > n:
            a = self.attrs[fh]
            a.st_size = len(d)
            a.st_blocks = (a.st_size + 511) // 512
        return len(buf)

    async def flush(self, fh):
        self.calls["flush"] += 1

    async def release(self, fh):
        self.calls["release"] += 1
        n = self.opened.get(fh, 1) - 1
        if n:
            self.opened[fh] = n
        else:
            self.opened.pop(fh, None)
            self._drop(fh)

    async def fsync(self, fh, datasync):
        self.calls["fsync"] += 1
        if self.journal is not None:
            await self.journal.sync(self.unsynced.pop(fh, []))

    async def forget(self, inode_list):
        self.calls["forget"] += 1

    # -------------------------------------------------------------- directories
    async def opendir(self, inode, ctx):
        self.calls["opendir"] += 1
        if inode not in self.dirs:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        self.calls["readdir"] += 1
        entries = list(self.dirs[fh].items())
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self.attrs[ino], i + 1):
                break

    async def releasedir(self, fh):
        self.calls["releasedir"] += 1

    async def fsyncdir(self, fh, datasync):
        self.calls["fsyncdir"] += 1

    async def statfs(self, ctx):
        self.calls["statfs"] += 1
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        used = sum(len(d) for d in self.data.values())
        s.f_blocks = 1 << 38
        s.f_bfree = s.f_bavail = s.f_blocks - (used + 4095) // 4096
        s.f_files = 1 << 20
        s.f_ffree = s.f_favail = s.f_files - len(self.attrs)
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------------- xattrs
    async def getxattr(self, inode, name, ctx):
        self.calls["getxattr"] += 1
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode, ctx):
        self.calls["listxattr"] += 1
        return []


async def _enosys(*args, **kwargs):
    raise pyfuse3.FUSEError(errno.ENOSYS)


async def serve(mountpoint: str, stats: str | None, no_flush: bool = False, no_xattr: bool = False,
                journal: str | None = None) -> None:
    fs = NullFS(GroupJournal(journal) if journal else None)
    # Experiments (not ferry's behaviour): the kernel stops sending a request type after one ENOSYS.
    if no_flush:
        fs.flush = _enosys
    if no_xattr:
        fs.getxattr = fs.listxattr = _enosys
    opts = {"fsname=nullfs", "subtype=nullfs", "default_permissions", "allow_other", "noatime"}
    pyfuse3.init(fs, mountpoint, opts)

    async def tune_kernel() -> None:
        await fs.initialized.wait()
        tuned = await trio.to_thread.run_sync(tune_bdi, mountpoint, MountOptions().readahead)
        print(f"nullfs: kernel tuning {tuned}", file=sys.stderr, flush=True)

    def dump() -> None:
        calls = dict(fs.calls, **({"journal_flushes": fs.journal.flushes} if fs.journal else {}))
        line = json.dumps(dict(sorted(calls.items())))
        print(f"nullfs: requests {line}", file=sys.stderr, flush=True)
        if stats:
            Path(stats).write_text(line + "\n")

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as sigs:
            lazy = False
            async for sig in sigs:
                if sig == signal.SIGUSR1:      # counts so far, e.g. between benchmark phases
                    dump()
                    continue
                cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
                await trio.run_process(cmd, check=False, capture_stderr=True)
                lazy = True

    unmounted = False
    try:
        async with trio.open_nursery() as n:
            n.start_soon(tune_kernel)
            n.start_soon(on_signals)
            print(f"nullfs: mounted on {mountpoint} (pid {os.getpid()})", file=sys.stderr, flush=True)
            await pyfuse3.main(min_tasks=4)
            unmounted = True
            n.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=not unmounted)
        dump()


def main() -> int:
    ap = argparse.ArgumentParser(description="minimal in-memory pyfuse3 filesystem (the pyfuse3 ceiling)")
    ap.add_argument("mountpoint")
    ap.add_argument("--stats", help="write the per-operation request counts (JSON) here at exit")
    ap.add_argument("--no-flush", action="store_true",
                    help="experiment: answer FLUSH with ENOSYS (the kernel then stops sending it)")
    ap.add_argument("--no-xattr", action="store_true",
                    help="experiment: answer GETXATTR/LISTXATTR with ENOSYS (the kernel then stops sending them, "
                         "including the security.capability check before every write(2))")
    ap.add_argument("--journal", metavar="FILE",
                    help="make fsync durable: append what was written since to FILE (on the local disk) and "
                         "fdatasync it, with group commit; the ceiling for durability=local")
    args = ap.parse_args()
    trio.run(serve, os.path.abspath(args.mountpoint), args.stats, args.no_flush, args.no_xattr, args.journal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
