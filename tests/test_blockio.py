"""Moving blocks between memory, the block cache and the store: the work per
block that sets ferry's sequential throughput (docs/performance.md).

Against a real file:// store and a real on-disk BlockCache; the store and
the cache are wrapped only to count what reaches them.

- A cold sequential read fetches every block from the store once and does
  not read back from the cache what it has just fetched (read-ahead once
  started the same fetch several times and re-read cached blocks).
- A block uploaded eagerly and then committed unchanged is hashed, encoded
  and PUT once; a changed block, or one a GC deleted meanwhile, is not
  taken from that memory.
- Cache files written with O_DIRECT read back exactly, at every size and
  range around the alignment, and so do buffered ones.
"""
from __future__ import annotations

import os
import stat
import threading
from collections import Counter
from pathlib import Path

import pytest
import trio
import trio.testing

import fsd.datapath.blockio as blockio_mod
from fsd.datapath.blockio import BlockIO
from fsd.datapath.cache.blockcache import BlockCache
from fsd.datapath.cache.directio import ALIGN, CacheFileIO
from fsd.datapath.cache.filler import CacheFiller
from fsd.datapath.data import DataLayer
from fsd.datapath.overlay import version_bytes
from fsd.format.dataobj import block_hash
from fsd.meta.ops import MetaOps
from fsd.meta.records import INODE
from fsd.meta.state import MetaState, new_volume_records
from fsd.store.aio import AsyncStore
from fsd.store.filestore import FileStore
from fsd.tasks import Background

ALGO = "blake3"   # the content hash new volumes use

BS = 64 * 1024
INO = 2


class CountingStore:
    """A FileStore that counts GETs and PUTs of data objects."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self._store = FileStore(root)
        self.url = self._store.url
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def get(self, key, start=None, end=None):
        with self._lock:
            self.calls["get"] += 1
        return self._store.get(key, start, end)

    def put(self, key, data, *, if_none_match=False):
        with self._lock:
            self.calls["put"] += 1
        return self._store.put(key, data, if_none_match=if_none_match)

    def __getattr__(self, name):
        return getattr(self._store, name)


class CountingCache(BlockCache):
    """A BlockCache that counts reads that found a block."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.hits = 0
        self._count_lock = threading.Lock()

    def _hit(self, data):
        if data is not None:
            with self._count_lock:
                self.hits += 1
        return data

    def get(self, h):
        return self._hit(super().get(h))

    def get_range(self, h, start, end):
        return self._hit(super().get_range(h, start, end))


def _bio(store, cache: BlockCache) -> BlockIO:
    return BlockIO(volume="t", root="v/t", epoch=1, astore=AsyncStore(store), cache=cache,
                   filler=CacheFiller(cache, "t"), compress=False, content_hash=ALGO,
                   cpu_limiter=trio.CapacityLimiter(4))


def _layer(bio: BlockIO) -> DataLayer:
    state = MetaState.from_records(BS, new_volume_records(1) + [
        [INODE, INO, stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, None]])
    return DataLayer(MetaOps(state), bio=bio, block_size=BS, dirty_limit=1 << 30, background=Background())


async def test_cold_sequential_read_fetches_each_block_once_and_never_rereads_it(tmp_path):
    store = CountingStore(tmp_path / "store")
    blocks = [os.urandom(BS) for _ in range(24)] + [os.urandom(BS // 3)]
    writer = _bio(store, BlockCache(tmp_path / "c1", 1 << 30, ALGO))
    data = _layer(writer)
    for i, raw in enumerate(blocks):
        ref = await writer.upload(raw)
        data.state.apply(ref.record(INO, i))
    data.state.inodes[INO].size = sum(map(len, blocks))
    store.calls.clear()

    cache = CountingCache(tmp_path / "c2", 1 << 30, ALGO)     # a new host: nothing cached
    reader = _bio(store, cache)
    data.bio = reader
    got = bytearray()
    async with trio.open_nursery() as n:
        await n.start(data.background.run)
        # Like the kernel: several reads of the stream in flight at once.
        for first in range(0, len(blocks), 3):
            parts: dict[int, bytes] = {}

            async def read(i: int, parts: dict[int, bytes] = parts) -> None:
                parts[i] = await data.read(INO, i * BS, BS)
            async with trio.open_nursery() as m:
                for i in range(first, min(first + 3, len(blocks))):
                    m.start_soon(read, i)
            got += b"".join(parts[i] for i in sorted(parts))
        data.background.stop()
    assert bytes(got) == b"".join(blocks)
    assert store.calls["get"] == len(blocks), "every block is fetched from the store exactly once"
    assert cache.hits == 0, "a block fetched a moment ago is handed over from memory, not read back"
    assert reader.filler.drain(10)
    assert len(cache) == len(blocks), "every fetched block is kept in the cache (nothing was dropped)"

    # Later reads (page cache dropped, memory copy gone) come from the cache, not the store.
    again = _bio(store, cache)
    data.bio = again
    assert not data.background.running
    assert await data.read(INO, 5 * BS + 7, 100) == blocks[5][7:107]
    assert store.calls["get"] == len(blocks) and cache.hits == 1


async def test_eagerly_uploaded_block_is_encoded_and_put_once(tmp_path, monkeypatch):
    encodes = Counter()
    real_encode = blockio_mod.encode_block

    def counting_encode(raw, compress, algo):
        encodes["n"] += 1
        return real_encode(raw, compress, algo)
    monkeypatch.setattr(blockio_mod, "encode_block", counting_encode)
    store = CountingStore(tmp_path / "store")
    bio = _bio(store, BlockCache(tmp_path / "c", 1 << 30, ALGO))
    data = _layer(bio)
    full = [os.urandom(BS) for _ in range(4)]
    async with trio.open_nursery() as n:
        await n.start(data.background.run)
        for i, raw in enumerate(full):
            await data.write(INO, i * BS, raw, 1)
        await data.write(INO, 2 * BS + 10, b"changed", 2)   # block 2 changes after its eager upload
        await trio.testing.wait_all_tasks_blocked()
        data.background.stop()
    assert store.calls["put"] == 4 and encodes["n"] == 4, "each full block went up eagerly"
    batch, _, _ = data.cut(1)
    expect2 = full[2][:10] + b"changed" + full[2][17:]
    assert batch[(INO, 2)] == expect2, "a block changed after its eager upload is cut as it is now"
    refs = {key: await bio.upload(raw) for key, raw in batch.items()}
    assert encodes["n"] == 5, "only the changed block is encoded again"
    assert store.calls["put"] == 5
    for i in (0, 1, 3):
        assert refs[(INO, i)].hash == block_hash(full[i], ALGO)

    # A GC deleting the object meanwhile: the same object is PUT again.
    raw = batch[(INO, 0)]
    h = refs[(INO, 0)].hash
    assert bio.begin_deleting({h}) == {h}
    bio.end_deleting({h})
    await bio.upload(raw)
    assert store.calls["put"] == 6, "an object the GC deleted is uploaded again, not assumed"


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_cache_file_io_round_trips_every_size_and_range(tmp_path, direct):
    io = CacheFileIO.for_directory(tmp_path) if direct else CacheFileIO(False)
    if direct and not io.direct:
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    for size in (0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 5, 1 << 20, (1 << 20) + 3):
        raw = os.urandom(size)
        p = tmp_path / f"f{size}"
        io.write_new(p, raw)
        assert p.stat().st_size == size
        assert io.read(p) == raw
        for start, end in ((0, size), (1, size - 1), (ALIGN - 1, ALIGN + 2), (size // 2, size + 100),
                           (size, size + 5), (ALIGN, 2 * ALIGN)):
            assert io.read(p, start, end) == raw[start:end], (size, start, end)
        with pytest.raises(FileExistsError):
            io.write_new(p, raw)
    with pytest.raises(FileNotFoundError):
        io.read(tmp_path / "missing")


def test_cache_filler_drops_copies_it_cannot_keep_up_with_and_drains_on_close(tmp_path):
    """The filler never makes a reader or writer wait: with its thread held
    up, copies beyond the queue are dropped (counted), the queued ones are
    written by close()."""
    cache = BlockCache(tmp_path / "c", 1 << 30, ALGO)
    gate = threading.Event()
    real_put = cache.put

    def slow_put(h, raw, pinned=False):
        gate.wait(10)
        return real_put(h, raw, pinned)
    cache.put = slow_put          # type: ignore[method-assign]
    filler = CacheFiller(cache, "t", queue_bytes=4 * BS)
    blocks = [os.urandom(BS) for _ in range(10)]
    hashes = [block_hash(b, ALGO) for b in blocks]
    offered = [filler.offer(h, b) for h, b in zip(hashes, blocks, strict=False)]
    # The first is taken by the thread at once (or queued); 4 fit the queue.
    assert offered.count(True) in (4, 5) and filler.dropped == 10 - offered.count(True)
    assert filler.offer(hashes[0], blocks[0]), "a block already queued counts as cached"
    assert filler.pending(hashes[0])
    gate.set()
    filler.close()
    assert not filler.pending(hashes[0])
    assert (sorted(h for h, ok in zip(hashes, offered, strict=False) if ok)
            == sorted(h for h in hashes if cache.contains(h)))
    for h, b in zip(hashes, blocks, strict=False):
        if cache.contains(h):
            assert cache.get(h) == b
    assert not filler.offer(hashes[-1], blocks[-1]), "nothing is queued after close"


@pytest.mark.parametrize("seed", range(6))
async def test_data_layer_matches_a_byte_model_with_eager_uploads_and_commits(tmp_path, seed):
    """Random writes (a third of them replacing a whole block, the case that
    keeps the write's own bytes as the dirty buffer), truncates, punches,
    reads and commits, with eager uploads running: every read, and the
    committed content at the end, equal a plain bytearray."""
    import random
    rnd = random.Random(seed)
    store = CountingStore(tmp_path / "store")
    bio = _bio(store, BlockCache(tmp_path / "c", 1 << 30, ALGO))
    data = _layer(bio)
    ops = data.ops
    model = bytearray()
    batch_id = 0

    async def commit() -> None:
        nonlocal batch_id
        batch_id += 1
        blocks, _, _ = data.cut(batch_id)
        ops.take_pending()
        results = {key: await bio.upload(await data.version_content(key, v)) for key, v in blocks.items()}
        await data.settle(batch_id, blocks.keys(), results, sum(map(version_bytes, blocks.values())))

    async with trio.open_nursery() as n:
        await n.start(data.background.run)
        for step in range(120):
            op = rnd.random()
            if op < 0.35:
                idx = rnd.randrange(6)
                raw = os.urandom(BS)
                await data.write(INO, idx * BS, raw, step)
                off, piece = idx * BS, raw
            elif op < 0.6:
                off = rnd.randrange(6 * BS)
                piece = os.urandom(rnd.choice((1, 100, 4096, BS - 3, BS + 5, 2 * BS)))
                await data.write(INO, off, piece, step)
            elif op < 0.7:
                size = rnd.randrange(7 * BS)
                ops.setattr(INO, step, size=size)
                data.truncate(INO, size)
                del model[size:]
                model.extend(bytes(size - len(model)))
                continue
            elif op < 0.78:
                off, length = rnd.randrange(6 * BS), rnd.randrange(1, 3 * BS)
                await data.punch(INO, off, length, step)
                end = min(off + length, len(model))
                if end > off:
                    model[off:end] = bytes(end - off)
                continue
            elif op < 0.9:
                await commit()
                continue
            else:
                off, size = rnd.randrange(7 * BS), rnd.randrange(1, 3 * BS)
                assert await data.read(INO, off, size) == bytes(model[off:off + size]), (seed, step)
                continue
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + len(piece)] = piece
            if rnd.random() < 0.3:
                await trio.testing.wait_all_tasks_blocked()     # let eager uploads finish
        await commit()
        data.background.stop()
    assert not data.dirty and not data.inflight
    assert data.state.inodes[INO].size == len(model)
    assert await data.read(INO, 0, len(model) + 10) == bytes(model)
