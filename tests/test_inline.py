"""Small writes committed inline in the journal (PATCH records).

An fsync after a small write must cost one segment PUT and no data object,
and the bytes must still be there, exactly, on another host after kill -9:
inline data is only as good as its replay. Every check reads the volume
through a *different* mount (fresh cache dir) or straight from the store.
"""
from __future__ import annotations

import hashlib
import os
import random

from fsd.datapath.commitplan import PATCH_MAX_PER_BLOCK
from fsd.format import keys
from fsd.meta.records import PATCH
from fsd.store import open_store
from fsd.volume import objects as vol_mod
from tests.helpers.mount import fsck_clean, write_fsync

VOL = "vol"
MiB = 1 << 20


def _store_view(store_url: str):
    """(replayed state, number of data objects) as a new host would see them."""
    store = open_store(store_url)
    try:
        ref, sb = vol_mod.locate(store, VOL)
        state = vol_mod.load_state(store, ref.root, sb).state
        objects = sum(1 for _ in store.list(keys.data_prefix(ref.root)))
        return state, objects
    finally:
        store.close()


def _journal_records(store_url: str) -> list:
    store = open_store(store_url)
    try:
        out = []
        root = vol_mod.locate(store, VOL)[0].root
        for key in store.list(keys.journal_prefix(root)):
            es = keys.parse_journal_key(root, key)
            if es is not None:
                out.extend(vol_mod.read_segment(store, root, *es).records)
        return out
    finally:
        store.close()


def test_small_fsynced_writes_go_inline_and_survive_kill9(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL, options=["commit_interval=3600"])
    size = 4 * MiB
    model = bytearray(os.urandom(size))
    write_fsync(a.mountpoint / "db", bytes(model))
    _, objects_before = _store_view(store_url)

    rnd = random.Random(7)
    fd = os.open(a.mountpoint / "db", os.O_RDWR)
    try:
        for _ in range(40):
            off = rnd.randrange(0, size - 4096)          # unaligned on purpose
            chunk = os.urandom(rnd.choice((1, 100, 4096)))
            model[off:off + len(chunk)] = chunk
            os.pwrite(fd, chunk, off)
            os.fdatasync(fd)
        # a small append past the end, inline as well
        tail = b"appended tail"
        os.pwrite(fd, tail, size)
        model += tail
        os.fdatasync(fd)
    finally:
        os.close(fd)

    state, objects_after = _store_view(store_url)
    assert objects_after == objects_before, "small fsynced writes must not create data objects"
    assert state.patch_bytes > 0
    assert any(r[0] == PATCH for r in _journal_records(store_url))

    a.kill9()
    a.cleanup_dead_mount()
    b = new_mount("b")
    b.mount(store_url, VOL, takeover=True)
    got = (b.mountpoint / "db").read_bytes()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(model).hexdigest()
    b.umount()
    fsck_clean(store_url, VOL)


def test_patches_interleaved_with_truncate_and_regrow(store_url, new_mount):
    """PATCH and TRUNC records replay in journal order: a patch clipped by a
    truncate must not resurface when the file grows again."""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL, options=["commit_interval=3600"])
    p = a.mountpoint / "t"
    model = bytearray(os.urandom(3 * MiB + 5000))
    write_fsync(p, bytes(model))
    fd = os.open(p, os.O_RDWR)
    try:
        def pw(off: int, data: bytes) -> None:
            nonlocal model
            if off > len(model):
                model += bytes(off - len(model))
            model[off:off + len(data)] = data
            os.pwrite(fd, data, off)

        pw(MiB + 100, b"A" * 3000)
        os.fdatasync(fd)
        os.ftruncate(fd, MiB + 1000)          # clips the patch mid-way
        del model[MiB + 1000:]
        os.fdatasync(fd)
        os.ftruncate(fd, 2 * MiB)             # grows: the clipped bytes read as zeros
        model += bytes(2 * MiB - len(model))
        pw(MiB + 2500, b"B" * 10)             # patch beyond the clip, inside the zeros
        os.fdatasync(fd)
        pw(5, b"C")                            # block 0: a patch over a whole object
        os.fsync(fd)
    finally:
        os.close(fd)
    a.kill9()
    a.cleanup_dead_mount()
    b = new_mount("b")
    b.mount(store_url, VOL, takeover=True)
    assert (b.mountpoint / "t").read_bytes() == bytes(model)
    b.umount()
    fsck_clean(store_url, VOL)


def test_a_block_with_many_patches_is_folded_back_into_an_object(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL, options=["commit_interval=3600"])
    p = a.mountpoint / "hot"
    model = bytearray(os.urandom(MiB))
    write_fsync(p, bytes(model))
    fd = os.open(p, os.O_RDWR)
    try:
        rnd = random.Random(3)
        chunk = 60 * 1024
        for _ in range(PATCH_MAX_PER_BLOCK // chunk + 2):   # more than one block may hold inline
            off = rnd.randrange(0, MiB - chunk)
            data = os.urandom(chunk)
            model[off:off + chunk] = data
            os.pwrite(fd, data, off)
            os.fdatasync(fd)
    finally:
        os.close(fd)
    state, _ = _store_view(store_url)
    assert state.patch_bytes <= PATCH_MAX_PER_BLOCK, "the block must have been stored whole again"
    assert state.blocks, "the hot block is a data object"
    a.umount()
    b = new_mount("b")
    b.mount(store_url, VOL)
    assert (b.mountpoint / "hot").read_bytes() == bytes(model)
    b.umount()
    fsck_clean(store_url, VOL)


def test_rewrite_from_block_start_keeps_inline_tail(store_url, new_mount):
    """A write from offset 0 that covers the block's object but not its
    inline tail must not drop the tail. The write is too big to go inline, so
    the block is stored whole and its BLOCK record replaces the patches.
    (Page-aligned, so the kernel sends exactly that write, no read-modify-write.)"""
    a = new_mount("a")
    a.mkfs(store_url, VOL)
    a.mount(store_url, VOL, options=["commit_interval=3600"])
    p = a.mountpoint / "f"
    write_fsync(p, b"o" * 4096)                      # block 0: an object of 4096 bytes
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"t" * 100, 200 * 4096)        # inline tail, far past the object
        os.fdatasync(fd)
        os.pwrite(fd, b"n" * 128 * 1024, 0)          # covers the object, not the tail
        os.fdatasync(fd)
    finally:
        os.close(fd)
    expected = b"n" * 128 * 1024 + bytes(200 * 4096 - 128 * 1024) + b"t" * 100
    a.umount()
    b = new_mount("b")
    b.mount(store_url, VOL)
    assert (b.mountpoint / "f").read_bytes() == expected
    b.umount()
    fsck_clean(store_url, VOL)
