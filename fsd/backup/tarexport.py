"""`ferry fs export`: a volume's snapshot as a POSIX (pax) tar stream, read
straight from the store: no mount, no container, on any host, while the
volume is in use elsewhere (docs/backup.md).

What the tar holds: every directory, regular file, symlink, FIFO and device
node with its mode, numeric owner and times to the nanosecond (pax `mtime`,
`atime`, `ctime`); extended attributes as `SCHILY.xattr.*` (what GNU tar
`--xattrs` and bsdtar read); hard links as links; files with holes in GNU
sparse format 1.0 (the holes are neither read from the store nor written
to the tar). Sockets have no tar form and are skipped (counted).

Memory stays bounded whatever the volume size: the tree is walked from
the metadata, and data objects are fetched `window` blocks ahead in worker
threads, in the order the tar needs them.

Blocking (store I/O): a CLI command, or a worker thread.
"""
from __future__ import annotations

import io
import logging
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import BinaryIO

from fsd.backup.exportread import BlockReader, ExportError, ExportStats, extents, pieces
from fsd.format.dataobj import HashSpec
from fsd.meta.state import MetaState
from fsd.store.base import ObjectStore
from fsd.store.sealing import hash_spec

log = logging.getLogger("ferry.export")

Progress = Callable[[int, int], None]        # (bytes of file data written, total)


@dataclass(frozen=True)
class Entry:
    path: str                    # tar name, relative ("./" for the root)
    ino: int
    link_to: str | None          # a hard link to an earlier entry's path


def walk(state: MetaState) -> Iterator[Entry]:
    """Every path of the tree in depth-first order (a directory, then what
    it holds, names in byte order: what `tar` writes, so an extracting tar
    restores a directory's times after its last child); an inode met again
    (a hard link) becomes a link to its first path."""
    first: dict[int, str] = {}
    yield Entry("./", 1, None)
    stack: list[Iterator[tuple[bytes, tuple[int, int]]]] = [iter(sorted(state.entries.get(1, {}).items()))]
    prefixes = ["."]
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            prefixes.pop()
            continue
        name, (child, _cookie) = nxt
        path = f"{prefixes[-1]}/{name.decode('utf-8', 'surrogateescape')}"
        node = state.inodes[child]
        if stat.S_ISDIR(node.mode):
            yield Entry(path + "/", child, None)
            stack.append(iter(sorted(state.entries.get(child, {}).items())))
            prefixes.append(path)
        elif node.nlink > 1 and child in first:
            yield Entry(path, child, first[child])
        else:
            first[child] = path
            yield Entry(path, child, None)


class _Data(io.RawIOBase):
    """The bytes of one tar member, pulled from the shared piece stream."""

    def __init__(self, head: bytes, chunks: Iterator[bytes], size: int) -> None:
        self.buf = bytearray(head)
        self.chunks = chunks
        self.left = size - len(head)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buf) < n) and self.left > 0:
            c = next(self.chunks)
            self.left -= len(c)
            self.buf += c
        take = len(self.buf) if n < 0 else min(n, len(self.buf))
        out = bytes(self.buf[:take])
        del self.buf[:take]
        return out


def _ns(t: int) -> str:
    s, ns = divmod(t, 10**9)
    return f"{s}.{ns:09d}"


def _info(state: MetaState, e: Entry) -> tarfile.TarInfo:
    n = state.inodes[e.ino]
    ti = tarfile.TarInfo(e.path)
    ti.mode = n.mode & 0o7777
    ti.uid, ti.gid, ti.uname, ti.gname = n.uid, n.gid, "", ""
    ti.mtime = n.mtime_ns // 10**9
    ti.pax_headers = {"mtime": _ns(n.mtime_ns), "atime": _ns(n.atime_ns), "ctime": _ns(n.ctime_ns)}
    for k, v in n.xattrs.items():
        ti.pax_headers["SCHILY.xattr." + k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
    fmt = stat.S_IFMT(n.mode)
    if e.link_to is not None:
        ti.type, ti.linkname = tarfile.LNKTYPE, e.link_to
    elif fmt == stat.S_IFDIR:
        ti.type = tarfile.DIRTYPE
    elif fmt == stat.S_IFLNK:
        ti.type, ti.linkname = tarfile.SYMTYPE, (n.target or b"").decode("utf-8", "surrogateescape")
    elif fmt == stat.S_IFIFO:
        ti.type = tarfile.FIFOTYPE
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        ti.type = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(n.rdev), os.minor(n.rdev)
    else:
        ti.type = tarfile.REGTYPE
    return ti


def sparse_map(runs: list[tuple[int, int]], size: int) -> bytes:
    """GNU sparse 1.0 map: decimal lines (count, then offset/length pairs),
    NUL-padded to a 512-byte boundary; a file ending in a hole ends with a
    zero-length run at its size, as GNU tar writes it."""
    if not runs or runs[-1][0] + runs[-1][1] < size:
        runs = [*runs, (size, 0)]
    text = f"{len(runs)}\n" + "".join(f"{o}\n{n}\n" for o, n in runs)
    b = text.encode()
    return b + b"\0" * (-len(b) % 512)


def export(store: ObjectStore, state: MetaState, roots: list[str], content_hash: HashSpec, out: BinaryIO, *,
           progress: Progress | None = None, window: int = 16) -> ExportStats:
    """Write the tar of `state` (a snapshot's metadata; `roots`: where its
    blocks are by `src`; `content_hash`: the volume's) to `out`,
    sequentially (a pipe is fine)."""
    stats = ExportStats()
    entries = list(walk(state))
    plans: dict[int, list[tuple[int, int]]] = {}
    for e in entries:
        n = state.inodes[e.ino]
        if e.link_to is None and stat.S_ISREG(n.mode):
            plans[e.ino] = extents(state, e.ino)
    total = sum(n for runs in plans.values() for _o, n in runs)
    reader = BlockReader(store, state, roots, content_hash, window)
    todo = (p for e in entries if e.link_to is None and e.ino in plans for p in pieces(state, e.ino, plans[e.ino]))
    chunks = reader.stream(todo)
    done = 0
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for e in entries:
                n = state.inodes[e.ino]
                if stat.S_ISSOCK(n.mode):
                    stats.skipped_sockets += 1
                    continue
                ti = _info(state, e)
                stats.entries += 1
                if ti.type != tarfile.REGTYPE:
                    tf.addfile(ti)
                    continue
                runs = plans[e.ino]
                data = sum(x for _o, x in runs)
                stats.files += 1
                if data == n.size:
                    ti.size = n.size
                    tf.addfile(ti, _Data(b"", chunks, n.size))
                else:
                    head = sparse_map(runs, n.size)
                    real = e.path
                    d, _, base = real.rpartition("/")
                    ti.name = f"{d}/GNUSparseFile.0/{base}"
                    ti.pax_headers = {**ti.pax_headers, "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                      "GNU.sparse.name": real, "GNU.sparse.realsize": str(n.size)}
                    ti.size = len(head) + data
                    tf.addfile(ti, _Data(head, chunks, ti.size))
                    stats.holes += n.size - data
                stats.bytes += data
                done += data
                if progress:
                    progress(done, total)
    finally:
        reader.close()
    return stats


def temp_snapshot_name(now_ns: int) -> str:
    """A snapshot that exists for the length of one export (a visible leftover,
    `ferry fs snapshot rm` it, if the export was killed)."""
    import secrets
    from datetime import datetime
    t = datetime.fromtimestamp(now_ns / 1e9, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"export-{t}-{secrets.token_hex(2)}"


def export_volume(store: ObjectStore, spec: str, out: BinaryIO, *, progress: Progress | None = None,
                  now_ns: int | None = None) -> ExportStats:
    """Export `VOLUME@SNAP`, `VOLUME@TIME` or `VOLUME` (as last committed).
    The last two are exported from a snapshot made for the export and
    removed after it: every byte comes from one consistent, GC-pinned state."""
    import time

    from fsd.backup import clones, snapshots
    from fsd.volume import objects as vol_mod
    now = now_ns if now_ns is not None else time.time_ns()
    try:
        src = clones.parse_source(spec, now)
    except ValueError as e:
        raise ExportError(str(e)) from None
    snap, temp = src.snap, None
    if snap is None:
        temp = snap = temp_snapshot_name(now)
        snapshots.create(store, src.volume, temp, at_ns=src.at_ns)
    try:
        ref, state = snapshots.open_state(store, src.volume, snap)
        sb = vol_mod.read_superblock(store, ref)
        if sb.layout == "block":       # the files inside the image, not the image
            from fsd.backup import blockexport
            return blockexport.export(store, state, sb, sb.data_roots(ref.root), out, progress=progress)
        return export(store, state, sb.data_roots(ref.root), hash_spec(store, ref.root, sb), out, progress=progress)
    finally:
        if temp is not None:
            snapshots.remove(store, src.volume, temp)
