"""The on-disk block cache against a real directory: layout, LRU eviction,
pins, restart, torn files, concurrency and a really full disk."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from fsd.datapath.cache.blockcache import BlockCache, CacheFull
from fsd.format.dataobj import block_hash

ALGO = "blake3"   # the content hash new volumes use

KB = 1024


def blk(i: int, size: int = 10 * KB) -> tuple[bytes, bytes]:
    raw = (i.to_bytes(4, "big") * (size // 4 + 1))[:size]
    return block_hash(raw, ALGO), raw


def files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def test_put_get_layout(tmp_path):
    c = BlockCache(tmp_path, 1 << 20, ALGO)
    h, raw = blk(1)
    assert not c.contains(h) and c.get(h) is None and c.get_range(h, 0, 1) is None
    assert c.put(h, raw)
    assert c.contains(h) and c.get(h) == raw
    assert files(tmp_path) == [tmp_path / h.hex()[:2] / h.hex()]
    assert (tmp_path / h.hex()[:2] / h.hex()).read_bytes() == raw
    assert c.get_range(h, 5, 100) == raw[5:100]
    assert c.get_range(h, len(raw) - 3, len(raw) + 50) == raw[-3:]
    assert c.get_range(h, 7, 7) == b""
    with pytest.raises(ValueError):
        c.get_range(h, 5, 4)
    assert c.used == len(raw) and len(c) == 1
    assert c.put(h, raw)   # again: nothing changes
    assert c.used == len(raw) and len(files(tmp_path)) == 1


def test_put_accepts_buffers(tmp_path):
    c = BlockCache(tmp_path, 1 << 20, ALGO)
    h, raw = blk(2)
    c.put(h, memoryview(bytearray(raw)))
    assert c.get(h) == raw


def test_discard(tmp_path):
    c = BlockCache(tmp_path, 1 << 20, ALGO)
    h, raw = blk(1)
    c.put(h, raw, pinned=True)
    c.discard(h)
    c.discard(h)
    assert not c.contains(h) and c.get(h) is None and files(tmp_path) == [] and c.used == 0


def test_small_capacity_evicts_lru(tmp_path):
    c = BlockCache(tmp_path, 30 * KB, ALGO)
    b = [blk(i) for i in range(5)]
    for h, raw in b[:3]:
        c.put(h, raw)
    c.get(b[0][0])                 # b0 is now the most recently used
    c.put(*b[3])                   # evicts b1, the least recently used
    assert [c.contains(h) for h, _ in b[:4]] == [True, False, True, True]
    c.get_range(b[2][0], 0, 10)    # ranges count as use too
    c.put(*b[4])                   # evicts b0
    assert [c.contains(h) for h, _ in b] == [False, False, True, True, True]
    assert c.used <= 30 * KB and len(files(tmp_path)) == 3


def test_pinned_never_evicted(tmp_path):
    c = BlockCache(tmp_path, 30 * KB, ALGO)
    pinned = [blk(i) for i in range(2)]
    for h, raw in pinned:
        c.put(h, raw, pinned=True)
    for i in range(10, 20):
        c.put(*blk(i))
    assert all(c.get(h) == raw for h, raw in pinned)
    assert c.used <= 30 * KB
    # full of pinned blocks: a clean block is not cached, a pinned one still is
    h3, raw3 = blk(3)
    c.put(h3, raw3, pinned=True)
    assert c.used == 30 * KB
    h4, raw4 = blk(4)
    assert c.put(h4, raw4) is False and not c.contains(h4)
    h5, raw5 = blk(5)
    assert c.put(h5, raw5, pinned=True) is True and c.used == 40 * KB
    for h, _ in pinned:
        c.unpin(h)
    c.put(*blk(6))
    assert not c.contains(pinned[0][0]) and c.contains(h3) and c.contains(h5)


def test_pin_an_already_cached_block(tmp_path):
    c = BlockCache(tmp_path, 20 * KB, ALGO)
    h, raw = blk(1)
    c.put(h, raw)
    c.put(h, raw, pinned=True)
    c.put(*blk(2))
    c.put(*blk(3))
    assert c.contains(h)
    c.unpin(h)
    c.put(*blk(4))
    assert not c.contains(h)


def test_block_larger_than_capacity_not_cached(tmp_path):
    c = BlockCache(tmp_path, 5 * KB, ALGO)
    h, raw = blk(1)
    assert c.put(h, raw) is False and files(tmp_path) == []


def test_restart_rebuilds_index_in_mtime_order(tmp_path):
    c = BlockCache(tmp_path, 1 << 20, ALGO)
    b = [blk(i) for i in range(4)]
    for k, (h, raw) in enumerate(b):
        c.put(h, raw)
        os.utime(tmp_path / h.hex()[:2] / h.hex(), ns=(10**18 + k, 10**18 - k))   # b3 oldest
    stale = tmp_path / b[0][0].hex()[:2] / ".tmp-deadbeef"
    stale.write_bytes(b"half a block")
    (tmp_path / ".tmp-top").write_bytes(b"x")
    stranger = tmp_path / "README"
    stranger.write_text("not ours")
    c2 = BlockCache(tmp_path, 30 * KB, ALGO)   # smaller now: trimmed to capacity, oldest first
    assert not stale.exists() and not (tmp_path / ".tmp-top").exists() and stranger.exists()
    assert [c2.contains(h) for h, _ in b] == [True, True, True, False]
    assert c2.used == 30 * KB
    c2.put(*blk(9))                      # evicts in mtime order: b2 was the oldest left
    assert [c2.contains(h) for h, _ in b[:3]] == [True, True, False]
    assert all(c2.get(h) == raw for h, raw in b[:2])


def test_torn_file_found_at_startup_is_dropped(tmp_path):
    c = BlockCache(tmp_path, 1 << 20, ALGO)
    (h1, raw1), (h2, raw2), (h3, raw3) = blk(1), blk(2), blk(3)
    for h, raw in [(h1, raw1), (h2, raw2), (h3, raw3)]:
        c.put(h, raw)
    p1, p2, p3 = (tmp_path / h.hex()[:2] / h.hex() for h in (h1, h2, h3))
    p1.write_bytes(raw1[:100])                 # torn by a power loss
    p2.write_bytes(b"\0" * len(raw2))          # zero-filled
    c2 = BlockCache(tmp_path, 1 << 20, ALGO)
    assert c2.get(h1) is None and not p1.exists() and not c2.contains(h1)
    assert c2.get_range(h2, 0, 10) is None and not p2.exists()
    assert c2.get_range(h3, 0, 10) == raw3[:10]
    # a torn file is rewritten by a put of the same block, not trusted
    p3.write_bytes(b"junk")
    c3 = BlockCache(tmp_path, 1 << 20, ALGO)
    c3.put(h3, raw3, pinned=True)
    assert p3.read_bytes() == raw3 and c3.get(h3) == raw3


def test_file_removed_behind_our_back(tmp_path):
    c = BlockCache(tmp_path, 1 << 20, ALGO)
    h, raw = blk(1)
    c.put(h, raw)
    (tmp_path / h.hex()[:2] / h.hex()).unlink()
    assert c.get(h) is None and not c.contains(h) and c.used == 0


def test_concurrent_puts_and_gets(tmp_path):
    c = BlockCache(tmp_path, 200 * KB, ALGO)
    blocks = [blk(i, 8 * KB) for i in range(60)]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for k in range(300):
                h, raw = blocks[(seed * 7 + k * 13) % len(blocks)]
                if k % 3:
                    got = c.get(h)
                    assert got is None or got == raw
                    r = c.get_range(h, 100, 200)
                    assert r is None or r == raw[100:200]
                else:
                    c.put(h, raw, pinned=(k % 9 == 0))
                    if k % 9 == 0:
                        c.unpin(h)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    assert c.used <= 200 * KB
    on_disk = {p.name for p in files(tmp_path)}
    assert on_disk == {h.hex() for h, _ in blocks if c.contains(h)}
    assert c.used == sum(p.stat().st_size for p in files(tmp_path))


# ---------------------------------------------------------------- full disk

@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only); skipped where mounting is not permitted."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_real_enospc_evicts_clean_blocks_and_retries(tiny_tmpfs):
    c = BlockCache(tiny_tmpfs, 1 << 30, ALGO)   # the capacity never triggers: the disk does
    blocks = [blk(i, 200 * KB) for i in range(12)]
    for h, raw in blocks:
        assert c.put(h, raw)
        assert c.get(h) == raw
    assert c.contains(blocks[-1][0]) and not c.contains(blocks[0][0])
    on_disk = {p.name for p in files(tiny_tmpfs)}
    assert on_disk == {h.hex() for h, _ in blocks if c.contains(h)}
    assert not any(p.name.startswith(".tmp") for p in files(tiny_tmpfs))


def test_real_enospc_with_only_pinned_blocks_raises_cache_full(tiny_tmpfs):
    c = BlockCache(tiny_tmpfs, 1 << 30, ALGO)
    pinned = []
    with pytest.raises(CacheFull) as exc:
        for i in range(12):
            h, raw = blk(i, 200 * KB)
            c.put(h, raw, pinned=True)
            pinned.append((h, raw))
    assert str(tiny_tmpfs) in str(exc.value) and exc.value.errno == 28
    assert isinstance(exc.value, OSError)
    assert pinned and all(c.get(h) == raw for h, raw in pinned)   # none of them evicted
    assert not any(p.name.startswith(".tmp") for p in files(tiny_tmpfs))
    # a clean block does not fit either, and is refused the same way
    for h, _ in pinned:
        c.unpin(h)
    h, raw = blk(99, 200 * KB)
    assert c.put(h, raw)
    assert not c.contains(pinned[0][0])


def test_elapsed_is_small(tmp_path):
    """Start-up scan of a few hundred blocks is quick (it is on the mount path)."""
    c = BlockCache(tmp_path, 1 << 30, ALGO)
    for i in range(300):
        c.put(*blk(i, 1 * KB))
    t0 = time.monotonic()
    c2 = BlockCache(tmp_path, 1 << 30, ALGO)
    assert len(c2) == 300 and time.monotonic() - t0 < 2
