"""Small writes laid over an in-flight block without copying it.

Why: a block cut into a commit batch is frozen while it uploads, and a write
must not change it; it used to be copied whole (1 MiB) into a new dirty
buffer on the first write after every cut, and copied again at the next cut.
With small fsyncs in a loop (4 KiB write + fdatasync: a database's log, or
any `durability=local` writer) that was two 1 MiB copies per fsync and 1 MiB
of memory held per batch until its upload. An `Overlay` instead keeps only
the bytes written, over the block's newest in-flight version: a few KiB per
fsync, whatever the block size.

The chain always ends in a whole version held in memory (bytes): an Overlay
is made only over an in-flight version, and in-flight versions are whole
blocks or Overlays. So the content is a pure function of immutable objects
(`content_slice`), computed without I/O, the same at any later moment; a
truncate or punch of the block after the cut cannot change what an earlier
batch commits.

An Overlay is mutable only while it is the block's dirty buffer (writes add
pieces); once cut into a batch it is never changed again.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# An Overlay holding more written bytes than this is turned into a whole
# buffer (one copy): reads and the commit then stop walking its pieces.
OVERLAY_MAX = 64 << 10


@dataclass(eq=False)
class Overlay:
    """`pieces`, in the order written, laid over `base` (a whole version or
    another Overlay). `nbytes`: the bytes the pieces hold (memory counted
    against the dirty limit)."""

    base: bytes | Overlay
    pieces: list[tuple[int, bytes]] = field(default_factory=list)
    nbytes: int = 0

    def add(self, off: int, data: bytes) -> None:
        self.pieces.append((off, data))
        self.nbytes += len(data)


Version = bytes | bytearray | Overlay     # what a dirty or in-flight block holds


def version_bytes(v: Version) -> int:
    """Memory a version holds of its own (an Overlay: its pieces only)."""
    return v.nbytes if isinstance(v, Overlay) else len(v)


def _chain(v: Version) -> tuple[bytes | bytearray, list[Overlay]]:
    """The whole version at the bottom, and the Overlays above it, lowest first."""
    layers: list[Overlay] = []
    while isinstance(v, Overlay):
        layers.append(v)
        v = v.base
    layers.reverse()
    return v, layers


def content_length(v: Version) -> int:
    """Length of the block's content: the bottom's, or further where a piece reaches."""
    bottom, layers = _chain(v)
    n = len(bottom)
    for layer in layers:
        for off, data in layer.pieces:
            n = max(n, off + len(data))
    return n


def content_slice(v: Version, start: int, end: int) -> bytes:
    """Bytes [start, end) of the block's content (shorter where the content
    ends; gaps between the bottom's end and a piece read as zeros)."""
    bottom, layers = _chain(v)
    buf = bytearray(bottom[start:end])
    for layer in layers:
        for off, data in layer.pieces:
            s, e = max(off, start), min(off + len(data), end)
            if s >= e:
                continue
            if s - start > len(buf):
                buf.extend(bytes(s - start - len(buf)))
            buf[s - start:e - start] = data[s - off:e - off]
    return bytes(buf)


def content(v: Version) -> bytes:
    """The whole content of a version (an Overlay's: one copy of its bottom)."""
    if isinstance(v, bytes):
        return v
    return content_slice(v, 0, content_length(v))
