"""The in-memory metadata of a volume, and how records change it.

`MetaState` is exactly "the result of applying records in order". Nothing
else changes it (apart from `MetaOps.note_write`, which updates a size in
place and owes the journal an INODE record), so a mount's memory and a replay
of the journal cannot drift apart. `apply` trusts its input: records from
storage are validated by `records.decode_records` first, and `MetaOps` only
emits records it has validated.

Derived indexes (`dir_parent`, `reg_bytes`, `next_ino`, `next_cookie`) are
maintained by `apply` so that lookups of ".." and statfs do not scan.
"""
from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from stat import S_IFDIR, S_IFREG
from typing import Any

from fsd.meta.records import (
    BLOCK,
    DENT,
    DENT_DEL,
    HOLE,
    INODE,
    INODE_DEL,
    PATCH,
    TRUNC,
    XATTR,
    XATTR_DEL,
    Record,
    RecordError,
)

ROOT_INO = 1
S_FMT = 0o170000   # file type bits of st_mode (stat.S_IFMT is a function, not this mask)


class Inode:
    """Attributes of one inode. Mutated in place by `MetaState.apply`, so a
    reference handed out by `MetaOps` stays current."""

    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "size", "atime_ns", "mtime_ns", "ctime_ns",
                 "rdev", "target", "xattrs")

    def __init__(self, ino: int, mode: int, uid: int, gid: int, nlink: int, size: int,
                 atime_ns: int, mtime_ns: int, ctime_ns: int, rdev: int = 0,
                 target: bytes | None = None, xattrs: dict[bytes, bytes] | None = None) -> None:
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = nlink
        self.size = size
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.rdev = rdev
        self.target = target
        self.xattrs: dict[bytes, bytes] = {} if xattrs is None else xattrs

    @property
    def is_dir(self) -> bool:
        return self.mode & S_FMT == S_IFDIR

    @property
    def is_reg(self) -> bool:
        return self.mode & S_FMT == S_IFREG

    def to_record(self) -> Record:
        """The INODE record that recreates these attributes (not the xattrs)."""
        return [INODE, self.ino, self.mode, self.uid, self.gid, self.nlink, self.size,
                self.atime_ns, self.mtime_ns, self.ctime_ns, self.rdev, self.target]

    def __repr__(self) -> str:
        return (f"Inode(ino={self.ino}, mode={self.mode:#o}, nlink={self.nlink}, size={self.size}, "
                f"uid={self.uid}, gid={self.gid}, target={self.target!r}, xattrs={len(self.xattrs)})")


@dataclass(frozen=True, slots=True)
class BlockRef:
    """Block of a file stored as data object `hash` uploaded in `epoch` (its
    key is `fsd.format.keys.data_key(root, hash, epoch)`; 0: format 1's
    untagged key); only its first `length` bytes count (TRUNC may clip a
    block without rewriting its object). `src` 0: the object is under the
    volume's own root; k >= 1: under the root of the superblock's k-th
    origin (a clone's block shared with the volume it was cloned from)."""
    hash: bytes
    length: int
    epoch: int = 0
    src: int = 0

    def record(self, ino: int, idx: int) -> Record:
        """The BLOCK record that points block `idx` of `ino` here."""
        if self.src:
            return [BLOCK, ino, idx, self.hash, self.length, self.epoch, self.src]
        if self.epoch:
            return [BLOCK, ino, idx, self.hash, self.length, self.epoch]
        return [BLOCK, ino, idx, self.hash, self.length]


def block_record_ref(r: Record) -> tuple[bytes, int, int]:
    """(hash, epoch, src) of the object a BLOCK record points at."""
    n = len(r)
    return r[3], r[5] if n > 5 else 0, r[6] if n > 6 else 0


def own_refs_of_records(records: Iterable[Record]) -> set[tuple[bytes, int]]:
    """(hash, epoch) of the objects under the volume's own root that these
    records reference (what its GC must keep; shared origin objects are
    kept by the origin's pins)."""
    out: set[tuple[bytes, int]] = set()
    for r in records:
        if r[0] == BLOCK and (len(r) < 7 or not r[6]):
            out.add((r[3], r[5] if len(r) > 5 else 0))
    return out


def own_refs(state: MetaState) -> set[tuple[bytes, int]]:
    """(hash, epoch) of every data object under the volume's own root that `state` references."""
    return {(r.hash, r.epoch) for bm in state.blocks.values() for r in bm.values() if not r.src}


def new_volume_records(now_ns: int, uid: int = 0, gid: int = 0, mode: int = 0o755) -> list[Record]:
    """Records of an empty volume: the root directory, written by mkfs."""
    return [[INODE, ROOT_INO, S_IFDIR | (mode & 0o7777), uid, gid, 2, 0, now_ns, now_ns, now_ns, 0, None]]


class MetaState:
    __slots__ = ("block_size", "inodes", "entries", "blocks", "patches", "patch_bytes", "next_ino",
                 "next_cookie", "dir_parent", "reg_bytes")

    def __init__(self, block_size: int) -> None:
        if type(block_size) is not int or block_size <= 0:
            raise ValueError(f"block size must be a positive int, got {block_size!r}")
        self.block_size = block_size
        self.inodes: dict[int, Inode] = {}
        # directory ino -> name -> (child ino, cookie)
        self.entries: dict[int, dict[bytes, tuple[int, int]]] = {}
        self.blocks: dict[int, dict[int, BlockRef]] = {}
        # Small writes committed inline in the journal (PATCH records): per
        # inode and block, (offset, bytes) to lay over the block's object (or
        # over zeros when it has none). Kept canonical: sorted, neither
        # overlapping nor touching, so a block rewritten in place a thousand
        # times holds its distinct bytes once. A BLOCK record replaces them.
        self.patches: dict[int, dict[int, list[tuple[int, bytes]]]] = {}
        self.patch_bytes = 0                       # sum of all patch lengths
        self.next_ino = 2                          # max ino ever seen + 1
        self.next_cookie: dict[int, int] = {}      # per directory: max cookie seen + 1 (default 1)
        self.dir_parent: dict[int, int] = {}       # directory ino -> its parent (root: absent)
        self.reg_bytes = 0                         # sum of sizes of regular files

    @classmethod
    def from_records(cls, block_size: int, recs: Iterable[Record]) -> MetaState:
        s = cls(block_size)
        s.apply_all(recs)
        return s

    # ------------------------------------------------------------ applying
    def apply(self, rec: Record) -> None:
        fn = _APPLY.get(rec[0])
        if fn is None:
            raise RecordError(f"unknown record type {rec[0]!r}")
        fn(self, rec)

    def apply_all(self, recs: Iterable[Record]) -> None:
        get = _APPLY.get
        for rec in recs:
            fn = get(rec[0])
            if fn is None:
                raise RecordError(f"unknown record type {rec[0]!r}")
            fn(self, rec)

    def _inode(self, r: Record) -> None:
        ino, mode, size = r[1], r[2], r[6]
        is_dir = mode & S_FMT == S_IFDIR
        n = self.inodes.get(ino)
        if n is None:
            self.inodes[ino] = Inode(ino, mode, r[3], r[4], r[5], size, r[7], r[8], r[9], r[10], r[11])
            if ino >= self.next_ino:
                self.next_ino = ino + 1
        else:
            if n.mode & S_FMT == S_IFREG:
                self.reg_bytes -= n.size
            n.mode = mode
            n.uid = r[3]
            n.gid = r[4]
            n.nlink = r[5]
            n.size = size
            n.atime_ns = r[7]
            n.mtime_ns = r[8]
            n.ctime_ns = r[9]
            n.rdev = r[10]
            n.target = r[11]
        if mode & S_FMT == S_IFREG:
            self.reg_bytes += size
        elif is_dir and ino not in self.entries:
            self.entries[ino] = {}

    def _inode_del(self, r: Record) -> None:
        ino = r[1]
        n = self.inodes.pop(ino, None)
        if n is None:
            return
        if n.mode & S_FMT == S_IFREG:
            self.reg_bytes -= n.size
        self.entries.pop(ino, None)
        self.next_cookie.pop(ino, None)
        self.blocks.pop(ino, None)
        self._drop_patches(ino)
        self.dir_parent.pop(ino, None)

    def _dent(self, r: Record) -> None:
        parent, name, child, cookie = r[1], r[2], r[3], r[4]
        m = self.entries.get(parent)
        if m is None:
            m = self.entries[parent] = {}
        m[name] = (child, cookie)
        if cookie >= self.next_cookie.get(parent, 1):
            self.next_cookie[parent] = cookie + 1
        c = self.inodes.get(child)
        if c is not None and c.mode & S_FMT == S_IFDIR:
            self.dir_parent[child] = parent

    def _dent_del(self, r: Record) -> None:
        parent = r[1]
        m = self.entries.get(parent)
        if m:
            e = m.pop(r[2], None)
            # A rename emits DENT_DEL before the new DENT, so this never
            # forgets the parent of a directory that is merely moving.
            if e is not None and self.dir_parent.get(e[0]) == parent:
                del self.dir_parent[e[0]]

    def _block(self, r: Record) -> None:
        ino = r[1]
        if ino not in self.inodes:      # data of a deleted inode settling late
            return
        bm = self.blocks.get(ino)
        if bm is None:
            bm = self.blocks[ino] = {}
        bm[r[2]] = BlockRef(r[3], r[4], r[5] if len(r) > 5 else 0, r[6] if len(r) > 6 else 0)
        self._drop_patches(ino, r[2])

    def _patch(self, r: Record) -> None:
        ino, idx, off, data = r[1], r[2], r[3], r[4]
        if off + len(data) > self.block_size:
            raise RecordError(f"PATCH of inode {ino} block {idx} ends at {off + len(data)}, past the "
                              f"block size {self.block_size}")
        if ino not in self.inodes:      # data of a deleted inode settling late
            return
        pm = self.patches.get(ino)
        if pm is None:
            pm = self.patches[ino] = {}
        pl = pm.get(idx)
        if pl is None:
            pm[idx] = [(off, data)]
            self.patch_bytes += len(data)
            return
        self.patch_bytes += _merge_piece(pl, off, data)
    def _drop_patches(self, ino: int, idx: int | None = None) -> None:
        pm = self.patches.get(ino)
        if pm is None:
            return
        for i in ([idx] if idx is not None else list(pm)):
            pl = pm.pop(i, None)
            if pl:
                self.patch_bytes -= sum(len(d) for _, d in pl)
        if not pm:
            del self.patches[ino]

    def block_patches(self, ino: int, idx: int) -> list[tuple[int, bytes]] | None:
        pm = self.patches.get(ino)
        return None if pm is None else pm.get(idx)

    def block_length(self, ino: int, idx: int) -> int:
        """Bytes of block `idx` that count: its object's (clipped) length or
        the end of its furthest patch, whichever is larger."""
        ref = self.blocks.get(ino, {}).get(idx)
        n = ref.length if ref is not None else 0
        for off, data in self.block_patches(ino, idx) or ():
            n = max(n, off + len(data))
        return n

    def _trunc(self, r: Record) -> None:
        ino, size = r[1], r[2]
        self._trunc_patches(ino, size)
        bm = self.blocks.get(ino)
        if not bm:
            return
        cut, rem = divmod(size, self.block_size)
        for idx in [i for i in bm if i > cut or (i == cut and rem == 0)]:
            del bm[idx]
        if rem:
            ref = bm.get(cut)
            if ref is not None and ref.length > rem:
                bm[cut] = BlockRef(ref.hash, rem, ref.epoch, ref.src)
        if not bm:
            del self.blocks[ino]

    def _hole(self, r: Record) -> None:
        """Blocks [index, index+count) read as zeros again (a punched range);
        the file's size is unchanged."""
        ino, first, count = r[1], r[2], r[3]
        bm = self.blocks.get(ino)
        if bm:
            for idx in in_range(bm, first, count):
                del bm[idx]
            if not bm:
                del self.blocks[ino]
        pm = self.patches.get(ino)
        if pm:
            for idx in in_range(pm, first, count):
                self._drop_patches(ino, idx)

    def _trunc_patches(self, ino: int, size: int) -> None:
        pm = self.patches.get(ino)
        if not pm:
            return
        cut, rem = divmod(size, self.block_size)
        for idx in [i for i in pm if i > cut or (i == cut and rem == 0)]:
            self._drop_patches(ino, idx)
        pl = pm.get(cut) if rem else None
        if pl:
            clipped = [(off, data[:rem - off]) for off, data in pl if off < rem]
            self.patch_bytes -= sum(len(d) for _, d in pl) - sum(len(d) for _, d in clipped)
            if clipped:
                pm[cut] = clipped
            else:
                del pm[cut]
        if not pm:
            self.patches.pop(ino, None)

    def _xattr(self, r: Record) -> None:
        n = self.inodes.get(r[1])
        if n is not None:
            n.xattrs[r[2]] = r[3]

    def _xattr_del(self, r: Record) -> None:
        n = self.inodes.get(r[1])
        if n is not None:
            n.xattrs.pop(r[2], None)

    # ------------------------------------------------------------ snapshot
    def snapshot_records(self) -> Iterator[Record]:
        """INODE, XATTR, DENT and BLOCK records that rebuild this state.
        INODEs come first so that DENTs find their children's types."""
        for n in self.inodes.values():
            yield n.to_record()
        for ino, n in self.inodes.items():
            for name, value in n.xattrs.items():
                yield [XATTR, ino, name, value]
        for parent, m in self.entries.items():
            for name, (child, cookie) in m.items():
                yield [DENT, parent, name, child, cookie]
        for ino, bm in self.blocks.items():
            for idx, ref in bm.items():
                yield ref.record(ino, idx)
        for ino, pm in self.patches.items():       # after BLOCKs: a BLOCK clears its patches
            for idx, pl in pm.items():
                for off, data in pl:
                    yield [PATCH, ino, idx, off, data]

    # ---------------------------------------------------------- comparison
    def content(self) -> dict[str, Any]:
        """Canonical plain-data view of what the records say (for tests and
        debugging; O(size)). Allocation counters are left out: a snapshot does
        not preserve `next_cookie`, and `next_ino` travels beside it."""
        return {
            "block_size": self.block_size,
            "inodes": {ino: (tuple(n.to_record()), tuple(sorted(n.xattrs.items())))
                       for ino, n in self.inodes.items()},
            "entries": {d: dict(m) for d, m in self.entries.items() if m},
            "blocks": {ino: dict(bm) for ino, bm in self.blocks.items() if bm},
            "patches": {ino: {i: list(pl) for i, pl in pm.items()} for ino, pm in self.patches.items() if pm},
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MetaState):
            return NotImplemented
        return self.content() == other.content()

    __hash__ = None  # type: ignore[assignment]


def _merge_piece(pl: list[tuple[int, bytes]], off: int, data: bytes) -> int:
    """Lay (off, data) over the canonical piece list `pl` in place, keeping
    it canonical (sorted by offset, no two pieces overlapping or touching).
    Returns the change in stored bytes."""
    end = off + len(data)
    # Pieces that overlap or touch [off, end): a contiguous run [i, j).
    i = bisect.bisect_left(pl, off, key=lambda p: p[0] + len(p[1]))
    j = i
    while j < len(pl) and pl[j][0] <= end:
        j += 1
    if i == j:
        pl.insert(i, (off, data))
        return len(data)
    first_off, first = pl[i]
    last_off, last = pl[j - 1]
    start = min(off, first_off)
    merged = bytearray(first[:max(0, off - first_off)])
    merged += data
    if last_off + len(last) > end:
        merged += last[end - last_off:]
    old = sum(len(d) for _, d in pl[i:j])
    pl[i:j] = [(start, bytes(merged))]
    return len(merged) - old


def in_range(m: Mapping[int, object], first: int, count: int) -> list[int]:
    """Keys of `m` in [first, first+count), without walking a huge range."""
    if count <= len(m):
        return [i for i in range(first, first + count) if i in m]
    return [i for i in m if first <= i < first + count]


_APPLY: dict[int, Callable[[MetaState, Record], None]] = {
    INODE: MetaState._inode,
    INODE_DEL: MetaState._inode_del,
    DENT: MetaState._dent,
    DENT_DEL: MetaState._dent_del,
    BLOCK: MetaState._block,
    TRUNC: MetaState._trunc,
    XATTR: MetaState._xattr,
    XATTR_DEL: MetaState._xattr_del,
    PATCH: MetaState._patch,
    HOLE: MetaState._hole,
}
