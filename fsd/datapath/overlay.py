"""Small writes laid over a block's earlier content without reading or copying it.

Why: a small write into a block that is not dirty used to make the whole
block dirty first: a copy of its in-flight version (1 MiB) or, for a
committed block, a read of its object from the cache with its inline
patches laid over it; and the cut copied the buffer again. With small
fsyncs in a loop (4 KiB write + fdatasync: a database's log or its random
page writes, any `durability=local` writer) that was a 1 MiB read or copy
per write, another per cut, and 1 MiB of memory held per batch until its
upload. An `Overlay` keeps only the bytes written, over the block's content
as it was when the overlay began: a few KiB per fsync, whatever the block
size. The commit needs no more when the written ranges travel inline (PATCH
records); only a block stored whole, a read, or an overlay grown past
`OVERLAY_MAX` needs the content underneath.

What an overlay lies over, its `base`, is immutable:
- an in-flight version of the block (whole bytes, or another Overlay), or
- `CommittedBase`: the committed state of the block when the overlay began,
  captured by value (its object reference and its inline patches), so a
  later truncate, punch or settle of the block does not change it. Its
  object stays readable for as long as an overlay may need it: the live GC
  only deletes objects the committed journal no longer references, and the
  record that drops this one (TRUNC, HOLE, INODE_DEL or a newer BLOCK) is
  journaled after the batch holding the overlay.

So the content of any version is a pure function of immutable objects and,
for a chain ending in a CommittedBase, of that object's bytes
(`content_slice(v, s, e, bottom)`).

An Overlay is mutable only while it is the block's dirty buffer (writes add
pieces); once cut into a batch, or replaced, it is never changed again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fsd.meta.state import BlockRef

# An Overlay holding more written bytes than this is turned into a whole
# buffer (one read or copy): reads and the commit then stop walking pieces.
OVERLAY_MAX = 64 << 10


@dataclass(frozen=True)
class CommittedBase:
    """A block's committed content at one moment: its object (None: none)
    with `patches` laid over it, in order."""

    ref: BlockRef | None
    patches: tuple[tuple[int, bytes], ...] = ()

    @property
    def length(self) -> int:
        n = self.ref.length if self.ref is not None else 0
        for off, data in self.patches:
            n = max(n, off + len(data))
        return n


@dataclass(eq=False)
class Overlay:
    """`pieces`, in the order written, laid over `base` cut to `clip` bytes
    (None: not cut; a truncate after the overlay began). `nbytes`: the bytes
    the pieces hold (memory counted against the dirty limit)."""

    base: bytes | Overlay | CommittedBase
    pieces: list[tuple[int, bytes]] = field(default_factory=list)
    nbytes: int = 0
    clip: int | None = None
    gen: int = 0            # changes with every change (a materialization in progress checks it)

    def add(self, off: int, data: bytes) -> None:
        self.pieces.append((off, data))
        self.nbytes += len(data)
        self.gen += 1

    def cut_at(self, size: int) -> int:
        """The block now ends at `size` (a truncate): nothing at or past it
        remains, below or in the pieces. Returns the piece bytes dropped."""
        before = self.nbytes
        self.clip = size if self.clip is None else min(self.clip, size)
        self.pieces = [(off, data[:size - off]) for off, data in self.pieces if off < size]
        self.nbytes = sum(len(d) for _, d in self.pieces)
        self.gen += 1
        return before - self.nbytes


Version = bytes | bytearray | Overlay     # what a dirty or in-flight block holds


class BaseNeeded(Exception):
    """The content asked for lies (partly) in a CommittedBase that was not
    supplied: the caller must fetch it (`bottom`) and ask again."""


def version_bytes(v: Version) -> int:
    """Memory a version holds of its own (an Overlay: its pieces only)."""
    return v.nbytes if isinstance(v, Overlay) else len(v)


def committed_bottom(v: Version) -> CommittedBase | None:
    """The CommittedBase a version's chain ends in, if it does."""
    while isinstance(v, Overlay):
        b = v.base
        if isinstance(b, CommittedBase):
            return b
        v = b
    return None


def _chain(v: Version) -> tuple[bytes | bytearray | CommittedBase, list[Overlay]]:
    """The version at the bottom, and the Overlays above it, lowest first."""
    layers: list[Overlay] = []
    while isinstance(v, Overlay):
        layers.append(v)
        b = v.base
        if isinstance(b, CommittedBase):
            layers.reverse()
            return b, layers
        v = b
    layers.reverse()
    return v, layers


def content_length(v: Version) -> int:
    """Length of the block's content (no I/O: a CommittedBase knows its length)."""
    bottom, layers = _chain(v)
    n = bottom.length if isinstance(bottom, CommittedBase) else len(bottom)
    for layer in layers:
        if layer.clip is not None:
            n = min(n, layer.clip)
        for off, data in layer.pieces:
            n = max(n, off + len(data))
    return n


def content_slice(v: Version, start: int, end: int, bottom: bytes | None = None) -> bytes:
    """Bytes [start, end) of the block's content (shorter where the content
    ends; gaps read as zeros). `bottom`: the content of the CommittedBase
    the chain ends in, if it does; without it, raises BaseNeeded unless
    the range is covered by pieces written since (as the written ranges a
    commit sends inline always are)."""
    base, layers = _chain(v)
    end = min(end, content_length(v))
    if end <= start:
        return b""
    known: list[tuple[int, int]] | None = None      # covered ranges, while the base is unknown
    if isinstance(base, CommittedBase):
        if bottom is None:
            buf = bytearray(end - start)
            known = []
        else:
            buf = bytearray(bottom[start:end])
    else:
        buf = bytearray(base[start:end])
    for layer in layers:
        if layer.clip is not None and layer.clip < start + len(buf):
            keep = max(0, layer.clip - start)
            del buf[keep:]
            if known is not None:
                known = [(s, min(e, layer.clip)) for s, e in known if s < layer.clip]
        for off, data in layer.pieces:
            s, e = max(off, start), min(off + len(data), end)
            if s >= e:
                continue
            if s - start > len(buf):
                buf.extend(bytes(s - start - len(buf)))
            buf[s - start:e - start] = data[s - off:e - off]
            if known is not None:
                known.append((s, e))
    if known is not None:
        pos = start
        for s, e in sorted(known):
            if s > pos:
                break
            pos = max(pos, e)
        if pos < end:
            raise BaseNeeded(f"bytes [{pos}, {end}) of the block lie in its committed content")
    if len(buf) < end - start:
        buf.extend(bytes(end - start - len(buf)))
    return bytes(buf)


def content(v: Version, bottom: bytes | None = None) -> bytes:
    """The whole content of a version (see content_slice for `bottom`)."""
    if isinstance(v, bytes):
        return v
    return content_slice(v, 0, content_length(v), bottom)
