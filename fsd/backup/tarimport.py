"""`ferry fs import`: a new volume from a tar stream (pax, GNU or ustar:
what `ferry fs export`, GNU tar, bsdtar and busybox tar write, compressed
with gzip, bzip2 or xz or not), uploading data objects directly: no mount.

All or nothing. The volume appears only with its incarnation record,
written after every data object and the metadata are in the store. A tar
that is truncated or corrupt stops the import with a clear error, and what
was uploaded is deleted; an import that dies (kill -9) leaves a marker
that the next GC pass anywhere in the store finds (`fsd.volume.creating`).

Memory stays bounded: file data flows through block by block (at most
`window` blocks in flight); only the metadata (one record per file,
directory entry and attribute) is held until the end, as any volume's
metadata is by a mount.

Blocks of zeros are holes (not stored), so sparse files stay sparse and
a tar's sparse members are never expanded in the store.

Blocking (store I/O): a CLI command, or a worker thread.
"""
from __future__ import annotations

import base64
import contextlib
import logging
import os
import posixpath
import stat
import tarfile
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import BinaryIO

from fsd import failpoints
from fsd.format import keys
from fsd.format.dataobj import HashSpec, encode_block
from fsd.format.superblock import make_superblock
from fsd.meta.check import check_state
from fsd.meta.records import BLOCK, DENT, INODE, NAME_MAX, XATTR, XATTR_SIZE_MAX
from fsd.meta.state import MetaState
from fsd.store.base import ObjectStore, PreconditionFailed
from fsd.store.sealing import adopt_root, hash_spec, new_encryption
from fsd.volume import creating
from fsd.volume import objects as vol_mod

log = logging.getLogger("ferry.import")

Progress = Callable[[int, int], None]      # (bytes of tar data read, total or 0 if unknown)
EPOCH = 1                                   # the data of a new volume belongs to its first epoch
_TYPES = {tarfile.DIRTYPE: stat.S_IFDIR, tarfile.SYMTYPE: stat.S_IFLNK, tarfile.FIFOTYPE: stat.S_IFIFO,
          tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK}


class TarImportError(vol_mod.VolumeError):
    """The tar cannot become a volume; nothing was created. The message says why."""


@dataclass
class ImportStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0              # file data stored (holes excluded)
    holes: int = 0
    objects: int = 0            # data objects uploaded (after de-duplication)
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Node:
    mode: int
    uid: int
    gid: int
    size: int
    atime: int
    mtime: int
    ctime: int
    rdev: int = 0
    target: bytes | None = None
    nlink: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


class _Tree:
    """The metadata being built: inodes, entries, blocks; records at the end."""

    def __init__(self, now_ns: int) -> None:
        self.nodes: dict[int, _Node] = {1: _Node(stat.S_IFDIR | 0o755, 0, 0, 0, now_ns, now_ns, now_ns)}
        self.entries: dict[int, dict[bytes, int]] = {1: {}}
        self.blocks: dict[int, dict[int, tuple[bytes, int]]] = {}
        self.paths: dict[str, int] = {"": 1}
        self.next_ino = 2
        self.now = now_ns

    def parent_of(self, path: str) -> int:
        """Inode of `path`'s directory, creating missing ones (tars may omit them)."""
        missing: list[str] = []           # walk up (no recursion: a path may be thousands deep)
        d = posixpath.dirname(path)
        while (ino := self.paths.get(d)) is None:
            missing.append(d)
            d = posixpath.dirname(d)
        if not stat.S_ISDIR(self.nodes[ino].mode):
            raise TarImportError(f"{path!r}: {d!r} is not a directory in the tar")
        for d in reversed(missing):
            ino = self.add(ino, d, _Node(stat.S_IFDIR | 0o755, 0, 0, 0, self.now, self.now, self.now))
        return ino

    def add(self, parent: int, path: str, node: _Node) -> int:
        name = posixpath.basename(path).encode("utf-8", "surrogateescape")
        if len(name) > NAME_MAX:
            raise TarImportError(f"{path!r}: a name is longer than {NAME_MAX} bytes")
        old = self.entries[parent].get(name)
        if old is not None:          # a later member replaces an earlier one, as tar -x does
            if stat.S_ISDIR(self.nodes[old].mode) and stat.S_ISDIR(node.mode):
                self.nodes[old] = _Node(**{**node.__dict__, "nlink": 0})
                return old
            self._drop(parent, name)
        ino = self.next_ino
        self.next_ino += 1
        self.nodes[ino] = node
        if stat.S_ISDIR(node.mode):
            self.entries[ino] = {}
        self.entries[parent][name] = ino
        node.nlink += 1
        self.paths[path] = ino
        return ino

    def link(self, parent: int, path: str, target: int) -> None:
        name = posixpath.basename(path).encode("utf-8", "surrogateescape")
        if name in self.entries[parent]:
            self._drop(parent, name)
        self.entries[parent][name] = target
        self.nodes[target].nlink += 1
        self.paths[path] = target

    def _drop(self, parent: int, name: bytes) -> None:
        ino = self.entries[parent].pop(name)
        node = self.nodes[ino]
        if stat.S_ISDIR(node.mode):
            raise TarImportError(f"the tar replaces directory {name!r} by a non-directory")
        node.nlink -= 1
        if node.nlink == 0:
            del self.nodes[ino]
            self.blocks.pop(ino, None)
        self.paths = {p: i for p, i in self.paths.items() if i in self.nodes}

    def records(self) -> list:
        out: list = []
        for ino, n in self.nodes.items():
            nlink = n.nlink if not stat.S_ISDIR(n.mode) else 2 + sum(
                1 for c in self.entries[ino].values() if stat.S_ISDIR(self.nodes[c].mode))
            out.append([INODE, ino, n.mode, n.uid, n.gid, nlink, n.size, n.atime, n.mtime, n.ctime, n.rdev,
                        n.target])
        for ino, n in self.nodes.items():
            out.extend([XATTR, ino, k, v] for k, v in n.xattrs.items())
        for parent, m in self.entries.items():
            out.extend([DENT, parent, name, child, cookie] for cookie, (name, child) in enumerate(m.items(), 1))
        for ino, bm in self.blocks.items():
            out.extend([BLOCK, ino, idx, h, n, EPOCH] for idx, (h, n) in bm.items())
        return out


def _ns(pax: dict[str, str], key: str, fallback: int) -> int:
    v = pax.get(key)
    if v is None:
        return fallback
    try:
        return int(Decimal(v) * 10**9)
    except (InvalidOperation, ValueError):
        return fallback


def _xattrs(pax: dict[str, str]) -> dict[bytes, bytes]:
    """SCHILY.xattr.* (GNU tar, ferry) and LIBARCHIVE.xattr.* (bsdtar: URL-encoded
    name, base64 value)."""
    out: dict[bytes, bytes] = {}
    for k, v in pax.items():
        if k.startswith("SCHILY.xattr."):
            out[k[13:].encode("utf-8", "surrogateescape")] = v.encode("utf-8", "surrogateescape")
        elif k.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(k[17:])
            try:
                out.setdefault(name, base64.b64decode(v + "=" * (-len(v) % 4)))
            except ValueError:
                continue
    for name, value in out.items():
        if not 0 < len(name) <= NAME_MAX or len(value) > XATTR_SIZE_MAX:
            raise TarImportError(f"extended attribute {name!r} is too large for ferry (name <= {NAME_MAX} bytes, "
                               f"value <= {XATTR_SIZE_MAX} bytes)")
    return out


def clean_path(name: str, strip: int) -> str | None:
    """The member's path inside the volume ('' for the root), or None when
    --strip-components removes all of it. Refuses '..' (a tar must not
    reach outside the volume)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise TarImportError(f"member {name!r} contains '..'; refusing it")
    if len(parts) < strip:
        return None
    return "/".join(parts[strip:])


class _Counting:
    """Counts what tarfile reads (the progress bar's position; a truncation
    check: a valid tar ends with zero blocks after its last member)."""

    def __init__(self, raw: BinaryIO, tick: Callable[[int], None]) -> None:
        self.raw = raw
        self.n = 0
        self.tick = tick

    def read(self, n: int = -1) -> bytes:
        b = self.raw.read(n)
        self.n += len(b)
        self.tick(self.n)
        return b


def import_tar(store: ObjectStore, name: str, src: BinaryIO, options: dict[str, str] | None = None, *,
               strip: int = 0, progress: Progress | None = None, total: int = 0, window: int = 16,
               clock: Callable[[], int] = time.time_ns) -> tuple[vol_mod.VolumeRef, ImportStats]:
    """Create volume `name` from the tar read from `src`."""
    keys.validate_volume_name(name)
    if vol_mod.live_volume(store, name) is not None:
        raise TarImportError(f"volume {name!r} already exists in {store.url}; import into a new name")
    if (options or {}).get("layout", "files") != "files":
        raise TarImportError("import makes layout=files volumes only; to fill a block volume, mount it and "
                             "extract the tar into it (tar -xpf FILE -C MOUNTPOINT)")
    try:
        opts = dict(options or {})
        sb = make_superblock(name, opts, clock(), encryption=new_encryption(store, opts))
    except ValueError as e:
        raise TarImportError(str(e)) from None
    sb.fencing = vol_mod.check_fencing_support(store, False)
    root = keys.volume_root(name, sb.uuid)
    marker = creating.Marker(store, root, f"import of {name}")
    stats = ImportStats()
    try:
        adopt_root(store, root, sb)           # data objects come before the superblock here
        hs = hash_spec(store, root, sb)
        tree = _read(store, root, sb.block_size, sb.compression == "zstd", hs, src, strip, stats,
                     marker, progress, total, window, clock())
        records = tree.records()
        problems = check_state(MetaState.from_records(sb.block_size, records))
        if problems:
            raise TarImportError("the tar does not make a valid tree: " + "; ".join(problems[:5]))
        vol_mod.write_root(store, root, sb, records)
        ref = vol_mod.commit_incarnation(store, name, sb)
    except BaseException:
        try:
            vol_mod.delete_all(store, root)
            marker.done()
        except Exception as e:  # noqa: BLE001 - the marker makes GC finish it
            log.warning("cannot delete the partial import under %s (%s); GC will", root, e)
        raise
    marker.done()
    return ref, stats


def _read(store: ObjectStore, root: str, bs: int, compress: bool, content_hash: HashSpec, src: BinaryIO, strip: int,
          stats: ImportStats, marker: creating.Marker, progress: Progress | None, total: int, window: int,
          now_ns: int) -> _Tree:
    tree = _Tree(now_ns)
    counting = _Counting(src, lambda n: progress(n, total) if progress else None)
    uploaded: set[bytes] = set()
    lock = threading.Lock()

    def put(raw: bytes) -> bytes:
        h, obj = encode_block(raw, compress, content_hash)
        with lock:
            if h in uploaded:
                return h
        with contextlib.suppress(PreconditionFailed):
            store.put(keys.data_key(root, h, EPOCH), obj, if_none_match=True)
        with lock:
            if h not in uploaded:
                uploaded.add(h)
                stats.objects += 1
        return h

    member = None
    seen = _HeaderWatch()
    pending: deque[tuple[int, int, Future, int]] = deque()
    try:
        with ThreadPoolExecutor(max_workers=window) as pool, \
                tarfile.open(fileobj=counting, mode="r|*",  # type: ignore[call-overload]
                             tarinfo=seen.info_class()) as tf:
            for member in tf:
                marker.touch()
                path = clean_path(member.name, strip)
                if path is None:
                    continue
                stats.entries += 1
                pax = member.pax_headers
                mtime = _ns(pax, "mtime", int(member.mtime) * 10**9)
                node = _Node(mode=member.mode & 0o7777, uid=member.uid, gid=member.gid, size=0,
                             atime=_ns(pax, "atime", mtime), mtime=mtime, ctime=_ns(pax, "ctime", mtime),
                             xattrs=_xattrs(pax))
                if path == "":
                    if member.isdir():
                        old = tree.nodes[1]
                        tree.nodes[1] = _Node(**{**node.__dict__, "mode": stat.S_IFDIR | node.mode,
                                                 "nlink": old.nlink})
                    continue
                parent = tree.parent_of(path)
                if member.islnk():
                    tpath = clean_path(member.linkname, strip)
                    target = tree.paths.get(tpath) if tpath is not None else None
                    if target is None or stat.S_ISDIR(tree.nodes[target].mode):
                        raise TarImportError(f"hard link {member.name!r} -> {member.linkname!r}: the target is "
                                             "not an earlier file of the tar")
                    tree.link(parent, path, target)
                    continue
                if member.isreg():
                    node.mode |= stat.S_IFREG
                    node.size = member.size
                    ino = tree.add(parent, path, node)
                    stats.files += 1
                    f = tf.extractfile(member)
                    assert f is not None
                    idx = 0
                    while True:
                        chunk = f.read(bs)
                        if not chunk:
                            break
                        data = chunk.rstrip(b"\0")      # zeros past a block's length read as zeros
                        if not data:
                            stats.holes += len(chunk)
                        else:
                            # Uploads overlap across files (small files are one block each).
                            pending.append((ino, idx, pool.submit(put, data), len(data)))
                            stats.bytes += len(data)
                            while len(pending) > 2 * window:
                                _settle(tree, pending.popleft())
                        idx += 1
                    continue
                kind = _TYPES.get(member.type)
                if kind is None:
                    stats.skipped.append(f"{member.name} (tar type {member.type!r})")
                    continue
                node.mode |= kind
                if member.issym():
                    node.target = member.linkname.encode("utf-8", "surrogateescape")
                    node.size = len(node.target)
                    if not node.target:
                        raise TarImportError(f"symlink {member.name!r} has an empty target")
                elif member.ischr() or member.isblk():
                    node.rdev = os.makedev(member.devmajor, member.devminor)
                tree.add(parent, path, node)
        while pending:
            _settle(tree, pending.popleft())
        why = seen.bad_end()
        if why:
            raise TarImportError(f"the tar {why}; nothing was created")
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        where = f" at member {member.name!r}" if member is not None else ""
        raise TarImportError(f"the tar is truncated or corrupt{where} (after {counting.n} bytes): {e}; "
                           "nothing was created") from None
    return tree


def _settle(tree: _Tree, item: tuple[int, int, Future, int]) -> None:
    """Record one finished upload as block `idx` of `ino` (unless a later
    member of the same path replaced that file meanwhile)."""
    ino, idx, fut, n = item
    h = fut.result()
    failpoints.hit("import_after_upload")
    if ino in tree.nodes:
        tree.blocks.setdefault(ino, {})[idx] = (h, n)


class _HeaderWatch:
    """Remembers the last header block tarfile read. tarfile ends a stream
    quietly at a header it cannot parse or at EOF; a tar that really ended
    has a zero block there, so anything else means corrupt or truncated."""

    def __init__(self) -> None:
        self.last: bytes | None = None

    def info_class(self) -> type[tarfile.TarInfo]:
        watch = self

        class _Info(tarfile.TarInfo):
            @classmethod
            def frombuf(cls, buf, encoding, errors):
                watch.last = bytes(buf)
                return super().frombuf(buf, encoding, errors)
        return _Info

    def bad_end(self) -> str | None:
        if self.last is None or self.last == bytes(len(self.last)) and len(self.last) == tarfile.BLOCKSIZE:
            return None
        if len(self.last) < tarfile.BLOCKSIZE:
            return "is truncated (it ends without its end-of-archive blocks)"
        return "is corrupt (a member header does not parse)"
