"""The data layer against a model, with randomness: writes of every size
(small ones become Overlays), cuts into batches, folds of patched blocks,
groups of batches committed as the committer plans them (inline PATCH or
uploaded object), truncates and punches, in random interleavings with
several batches in flight (durability=local).

At every step a read of the whole file must equal the model (a bytearray
per file); at the end, with everything settled, memory must equal a replay
of the journal the commits wrote. A fake BlockIO stands in for the store
(a dict by hash): the layer's bookkeeping is what is under test."""
from __future__ import annotations

import hashlib
import os
import random
import stat

import pytest

from fsd.datapath.commitplan import Batch, Limits, plan_commit, segment_records
from fsd.datapath.data import DataLayer
from fsd.datapath.overlay import version_bytes
from fsd.meta.ops import MetaOps
from fsd.meta.records import INODE
from fsd.meta.state import BlockRef, MetaState, new_volume_records

BS = 4096
INO = 2


class FakeBlockIO:
    """Objects by hash, in memory; a ref's length clips its object (TRUNC)."""

    def __init__(self) -> None:
        self.objects: dict[bytes, bytes] = {}

    async def upload(self, raw: bytes) -> BlockRef:
        h = hashlib.blake2b(raw, digest_size=32).digest()
        self.objects[h] = bytes(raw)
        return BlockRef(h, len(raw))

    async def fetch(self, ino: int, idx: int, ref: BlockRef) -> bytes:
        return self.objects[ref.hash][:ref.length]

    async def read_range(self, ino: int, idx: int, ref: BlockRef, start: int, end: int) -> bytes:
        return self.objects[ref.hash][:ref.length][start:end]


def _state() -> MetaState:
    return MetaState.from_records(BS, new_volume_records(1) + [
        [INODE, INO, stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, None]])


async def _commit(data: DataLayer, bio: FakeBlockIO, group: list[Batch], journal: list, limits: Limits) -> None:
    """What Committer._commit_batches_locked does, minus the store."""
    st = data.state
    existing = {k: sum(len(d) for _, d in st.block_patches(*k) or ()) for b in group for k in b.blocks}
    plan = plan_commit(group, st.patch_bytes, existing, limits)
    uploaded: list[dict] = [{} for _ in group]
    for i, key in plan.uploads:
        uploaded[i][key] = await bio.upload(await data.version_content(key, group[i].blocks[key]))
    journal.extend(segment_records(group, plan, uploaded))
    for i, b in enumerate(group):
        await data.settle(b.id, b.blocks.keys(), uploaded[i], b.nbytes, plan.inline[i])


def _model_write(model: bytearray, off: int, data: bytes) -> None:
    if off > len(model):
        model.extend(bytes(off - len(model)))
    model[off:off + len(data)] = data


@pytest.mark.parametrize("seed", range(int(os.environ.get("FERRY_MODEL_SEEDS", "40"))))
async def test_random_interleavings_read_back_the_model_and_replay_equals_memory(seed: int):
    rng = random.Random(seed)
    bio = FakeBlockIO()
    state = _state()
    ops = MetaOps(state)
    data = DataLayer(ops, bio=bio, block_size=BS, dirty_limit=1 << 30)  # type: ignore[arg-type]
    limits = Limits(inline_max=rng.choice([64, 512, 4096]), patch_max_per_block=rng.choice([256, 2048, 1 << 20]),
                    patch_budget=rng.choice([1024, 1 << 20]))
    model = bytearray()
    journal: list = []
    queue: list[Batch] = []          # cut, not yet committed (oldest first)
    next_id = 1
    now = 1
    trace = []
    for _step in range(250):
        now += 1
        r = rng.random()
        if r < 0.55:
            size = rng.choice([1, 7, 100, 512, 1000, BS - 3, BS, BS + 5, 3 * BS])
            off = rng.randrange(0, 6 * BS)
            if rng.random() < 0.2:
                off -= off % BS
            payload = bytes(rng.randrange(1, 256) for _ in range(size))
            await data.write(INO, off, payload, now)
            trace.append(('write', off, size))
            _model_write(model, off, payload)
        elif r < 0.75:
            records = ops.take_pending()
            blocks, extents, whole = data.cut(next_id)
            nbytes = sum(version_bytes(b) for b in blocks.values())
            queue.append(Batch(next_id, records, blocks, nbytes, 0, extents, whole))
            trace.append(('cut', next_id))
            next_id += 1
        elif r < 0.88 and queue:
            n = rng.randint(1, len(queue))
            group, queue = queue[:n], queue[n:]
            await _commit(data, bio, group, journal, limits)
            trace.append(('commit', [b.id for b in group]))
        elif r < 0.91:
            patched = sorted(state.patches.get(INO, {}))
            if patched:                   # what the committer does over the inline budget
                idx = rng.choice(patched)
                await data.fold(INO, idx)
                trace.append(('fold', idx))
        elif r < 0.95:
            size = rng.randrange(0, 7 * BS)
            ops.setattr(INO, now, size=size)
            data.truncate(INO, size)
            trace.append(('trunc', size))
            del model[size:]
            model.extend(bytes(size - len(model)))
        else:
            off, length = rng.randrange(0, 6 * BS), rng.randrange(1, 3 * BS)
            await data.punch(INO, off, length, now)
            trace.append(('punch', off, length))
            end = min(off + length, len(model))
            if end > off:
                model[off:end] = bytes(end - off)
        size = state.inodes[INO].size
        assert size == len(model), f"step {_step}: size"
        got = await data.read(INO, 0, size + BS)
        assert got == bytes(model), f"seed {seed} step {_step}: content differs from the model: {trace[-12:]}"
    records = ops.take_pending()
    blocks, extents, whole = data.cut(next_id)
    queue.append(Batch(next_id, records, blocks, sum(version_bytes(b) for b in blocks.values()), 0, extents, whole))
    await _commit(data, bio, queue, journal, limits)
    assert not data.inflight and not data.unsettled and data.inflight_bytes == 0
    replay = _state()
    replay.apply_all(journal)
    fresh = DataLayer(MetaOps(replay), bio=bio, block_size=BS, dirty_limit=1 << 30)  # type: ignore[arg-type]
    assert await fresh.read(INO, 0, len(model) + BS) == bytes(model), ("replay reads back the model", trace)
    for idx in sorted(set(replay.blocks.get(INO, {})) | set(state.blocks.get(INO, {}))):
        assert replay.blocks.get(INO, {}).get(idx) == state.blocks.get(INO, {}).get(idx), (idx, trace)
    assert replay.patches == state.patches
