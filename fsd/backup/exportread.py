"""Reading a volume's file contents out of the store, for exports (tar,
fsd/backup/tarexport.py; block images, fsd/backup/blockexport.py): which runs of a file
hold data, the pieces of blocks they need, and a reader that fetches
pieces `window` ahead in worker threads and yields their bytes in order.

Why a module of its own: both exports read data the same way, and neither
should import the other for it. Blocking (store I/O).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from fsd.format import keys
from fsd.format.dataobj import HashSpec, decode_block
from fsd.meta.state import MetaState
from fsd.store.base import NotFound, ObjectStore


class ExportError(Exception):
    """An export that cannot go on; the message says why."""


@dataclass
class ExportStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0               # file data written (holes excluded)
    holes: int = 0               # bytes of holes not written
    skipped_sockets: int = 0


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of block `idx` of file `ino`, as the tar needs them."""

    ino: int
    idx: int
    start: int
    end: int


def extents(state: MetaState, ino: int) -> list[tuple[int, int]]:
    """(offset, length) runs of the file that hold data: its blocks with an
    object or patches, clipped to the file size; everything else is a hole."""
    node = state.inodes[ino]
    bs = state.block_size
    idxs = sorted(set(state.blocks.get(ino, {})) | set(state.patches.get(ino, {})))
    out: list[tuple[int, int]] = []
    for idx in idxs:
        start = idx * bs
        end = min(start + state.block_length(ino, idx), node.size)
        if end <= start:
            continue
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], end - out[-1][0])
        else:
            out.append((start, end - start))
    return out


def pieces(state: MetaState, ino: int, runs: list[tuple[int, int]]) -> Iterator[Piece]:
    bs = state.block_size
    for off, n in runs:
        pos, end = off, off + n
        while pos < end:
            idx = pos // bs
            stop = min(end, (idx + 1) * bs)
            yield Piece(ino, idx, pos - idx * bs, stop - idx * bs)
            pos = stop


class BlockReader:
    """Fetches pieces `window` ahead in threads; yields their bytes in order."""

    def __init__(self, store: ObjectStore, state: MetaState, roots: list[str], content_hash: HashSpec,
                 window: int = 16) -> None:
        self.store = store
        self.state = state
        self.roots = roots
        self.content_hash = content_hash
        self.pool = ThreadPoolExecutor(max_workers=window)
        self.window = window

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def block(self, p: Piece) -> bytes:
        st = self.state
        ref = st.blocks.get(p.ino, {}).get(p.idx)
        n = max(st.block_length(p.ino, p.idx), p.end)
        buf = bytearray(n)
        if ref is not None:
            key = keys.data_key(self.roots[ref.src], ref.hash, ref.epoch)
            try:
                raw = decode_block(self.store.get(key), ref.hash, key, self.content_hash)[:ref.length]
            except NotFound:
                raise ExportError(f"data object {key} (inode {p.ino} block {p.idx}) is missing from the "
                                  "store; run 'ferry fs fsck'") from None
            buf[:len(raw)] = raw
        for off, data in st.block_patches(p.ino, p.idx) or ():
            buf[off:off + len(data)] = data
        return bytes(buf[p.start:p.end])

    def stream(self, todo: Iterator[Piece]) -> Iterator[bytes]:
        q: deque[Future] = deque()
        for p in todo:
            q.append(self.pool.submit(self.block, p))
            if len(q) >= self.window:
                yield q.popleft().result()
        while q:
            yield q.popleft().result()
