"""The plan of one commit round, decided without I/O.

Why a module of its own: the commit is the heart of the data path, and
what it decides - which dirty blocks become data objects, which small
writes travel inline as PATCH records in the segment, what the segment
holds in which order, what each batch settles once the segment is durable -
is easier to get right as a table than inside the code that uploads and
retries. fsd/datapath/committer.py executes a `CommitPlan`: it uploads
`plan.uploads`, then writes `segment_records(...)` as one segment, then
settles each batch with its uploaded refs and `plan.inline[i]`.

A group holds several batches (durability=local uploads whatever queued up
as one segment). A block that a later batch of the group rewrites is stored
once, for the latest batch: its BLOCK record, placed after every record of
the batches before it, gives the final state on replay.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsd.datapath.overlay import BaseNeeded, Overlay, content_length, content_slice
from fsd.meta.records import PATCH
from fsd.meta.state import BlockRef

Key = tuple[int, int]                 # (inode, block index)
Piece = tuple[int, bytes]             # (offset in the block, bytes)
Record = list[Any]                    # one journal record (fsd/meta/records.py)

# Inline small writes (PATCH records in the segment) instead of uploading
# their whole block: an fsync after a small write then costs one PUT.
INLINE_MAX = 64 << 10            # bytes written into one block since its last commit
PATCH_MAX_PER_BLOCK = 256 << 10  # inline bytes a block may accumulate before it is stored whole
PATCH_BUDGET = 16 << 20          # inline bytes in the whole volume's metadata


@dataclass
class Batch:
    """What one cut took: the metadata records and dirty blocks changed since the previous cut."""

    id: int
    records: list[Record]
    blocks: dict[Key, bytes | Overlay]     # whole content, or an Overlay (fsd/datapath/overlay.py)
    nbytes: int
    first_change_ns: int = 0
    # key -> merged written ranges; None (or absent): written whole
    extents: dict[Key, list[tuple[int, int]] | None] = field(default_factory=dict)
    # blocks to store whole although their ranges are known (folded: their
    # content did not change, so the local journal keeps only the ranges)
    store_whole: set[Key] = field(default_factory=set)


@dataclass(frozen=True)
class Limits:
    inline_max: int = INLINE_MAX
    patch_max_per_block: int = PATCH_MAX_PER_BLOCK
    patch_budget: int = PATCH_BUDGET


@dataclass(frozen=True)
class CommitPlan:
    uploads: list[tuple[int, Key]]          # (batch index, block) stored as data objects
    inline: list[dict[Key, list[Piece]]]    # per batch: blocks carried as PATCH records
    batch_id: int                           # the last batch's id: the segment covers up to it


def merge_extents(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-adjacent union of [start, end) ranges."""
    out: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def plan_commit(batches: list[Batch], patch_bytes: int, existing_patches: Mapping[Key, int],
                limits: Limits = Limits()) -> CommitPlan:
    """Decide a group commit. `patch_bytes`: inline bytes the volume's metadata
    holds now; `existing_patches`: inline bytes each block already has.

    A block goes inline when every batch of the group that touched it wrote
    known ranges (not the whole block), their union is at most `inline_max`
    bytes, the block's patches stay within `patch_max_per_block`, and the
    volume's budget has room (blocks in the order the group first wrote
    them take it first). Every other
    block is uploaded once, for the latest batch that wrote it (the
    executor lays an Overlay onto its base first: `overlay.content`)."""
    latest: dict[Key, int] = {}
    for i, b in enumerate(batches):
        for key in b.blocks:
            latest[key] = i
    budget = limits.patch_budget - patch_bytes
    inline: list[dict[Key, list[Piece]]] = [{} for _ in batches]
    uploads: list[tuple[int, Key]] = []
    for key, i in latest.items():
        ranges: list[tuple[int, int]] = []
        whole = False
        for b in batches[: i + 1]:
            if key in b.blocks:
                ext = b.extents.get(key)
                if ext is None or key in b.store_whole:
                    whole = True             # written whole at least once: stored whole
                    break
                ranges.extend(ext)
        if not whole:
            v = batches[i].blocks[key]
            length = content_length(v)
            try:
                pieces = [(s, content_slice(v, s, min(e, length))) for s, e in merge_extents(ranges) if s < length]
            except BaseNeeded:      # not expected (written ranges are always held): store it whole
                pieces, whole = [], True
            n = sum(len(d) for _, d in pieces)
            if (not whole and n <= limits.inline_max and existing_patches.get(key, 0) + n <= limits.patch_max_per_block
                    and n <= budget):
                inline[i][key] = pieces
                budget -= n
                continue
        uploads.append((i, key))
    return CommitPlan(uploads=uploads, inline=inline, batch_id=batches[-1].id)


def segment_records(batches: list[Batch], plan: CommitPlan, uploaded: list[dict[Key, BlockRef]]) -> list[Record]:
    """The segment's records: batch by batch, its metadata records, then a
    BLOCK record for each block uploaded for it, then PATCH records for each
    block carried inline for it. `uploaded[i]`: the refs of batch i's uploads."""
    records: list[Record] = []
    for i, b in enumerate(batches):
        records.extend(b.records)
        for (ino, idx), ref in uploaded[i].items():
            records.append(ref.record(ino, idx))
        for (ino, idx), pieces in plan.inline[i].items():
            records.extend([PATCH, ino, idx, off, data] for off, data in pieces)
    return records
