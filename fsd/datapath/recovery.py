"""Pure decisions for recovering a crashed `durability=local` mount of this
cache directory (issue 7). No I/O: `fsd.lifecycle.resume` reads the store and writes
what these functions plan.

The local journal holds batches that fsync acknowledged before they were in
the store. Recovery *resumes the crashed epoch*: the cache directory's owner
token proves that the newest, unsealed epoch E was this directory's own
mount, so its missing batches are appended to E itself, at E's next seqs,
exactly as the crashed writer would have committed them, and E is then
sealed ("release"). After that the mount claims E+1 as after a clean
release. Why this is correct (docs/architecture.md, "Local recovery"):

- Each entry (records, then written ranges or whole blocks) was cut against
  the in-memory state = replay of E's committed segments + the entries
  before it. Appending the entries in batch order after E's last committed
  segment reproduces that base for every entry, so a range is always laid
  over the block content it was written against: never a newer or older one.
- A batch is in the store iff a segment of E carries a batch number >= its
  own (the uploader commits batches in order; a segment's `batch` is its
  last one), so "what is left" is decided by the last segment of E alone.
- The appends are conditional writes at the first free seq, like any commit:
  if a takeover sealed E first, the append fails and the rest is dropped
  (with durability=local a lost host may lose what it had not uploaded), and
  if our append lands first, the takeover's seal goes after it and its
  replay includes it.
- Nothing is cleared locally until E is sealed, so a crash mid-recovery
  leaves E unsealed with the same entries: the next mount does the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fsd.datapath.localjournal import LocalEntry
from fsd.meta.records import BLOCK, PATCH, Record

SEGMENT_BYTES = 8 << 20     # payload bytes per recovery segment (few, large PUTs)
SEGMENT_ENTRIES = 4096      # and at most this many batches in one


@dataclass(frozen=True)
class EpochTail:
    """What the store says about the end of one epoch's journal."""

    epoch: int
    sealed: bool
    next_seq: int            # first free seq (where the next segment or seal goes)
    committed_batch: int     # highest batch number among its segments (0: none)


@dataclass
class RecoveryPlan:
    resume: EpochTail | None                          # the epoch to append to, or None
    todo: list[LocalEntry] = field(default_factory=list)      # to append, in order
    already: int = 0                                  # entries the store has already
    dropped: list[LocalEntry] = field(default_factory=list)   # acknowledged, no longer applicable

    @property
    def dropped_epochs(self) -> list[int]:
        return sorted({e.epoch for e in self.dropped})


def plan_recovery(entries: list[LocalEntry], *, own_epoch: int | None, latest_epoch: int,
                  tails: dict[int, EpochTail]) -> RecoveryPlan:
    """Sort the local journal's entries into already committed, to append
    to the crashed epoch, and dropped.

    `own_epoch`: the epoch this cache directory's owner record names (None
    when the record is missing or belongs to another volume). `tails`: the
    store's view of every epoch the entries belong to. Only `own_epoch` can
    be resumed, and only while it is the newest epoch and unsealed: then
    nobody else has written since. Entries of any other epoch that the store
    lacks can no longer apply (another mount owned the volume since)."""
    resumable = (own_epoch is not None and own_epoch == latest_epoch and own_epoch in tails
                 and not tails[own_epoch].sealed)
    plan = RecoveryPlan(resume=tails[own_epoch] if resumable and own_epoch is not None else None)
    last_batch: dict[int, int] = {}
    for e in entries:
        tail = tails.get(e.epoch)
        if tail is not None and e.batch <= tail.committed_batch:
            plan.already += 1
        elif e.batch <= last_batch.get(e.epoch, 0):
            plan.already += 1       # a duplicate of an entry seen before: keep the first
        elif plan.resume is not None and e.epoch == plan.resume.epoch:
            plan.todo.append(e)
        else:
            plan.dropped.append(e)
        last_batch[e.epoch] = max(last_batch.get(e.epoch, 0), e.batch)
    if plan.resume is not None and not plan.todo:
        plan.resume = None          # nothing to append: the ordinary mount path seals it
    return plan


@dataclass(frozen=True)
class WholeBlock:
    """A block the entry kept whole: uploaded as a data object, then
    referenced by a BLOCK record at this place in the segment."""

    ino: int
    index: int
    raw: bytes


@dataclass
class PlannedSegment:
    items: list[Any]           # journal records, and WholeBlock placeholders for BLOCK records
    last_batch: int        # the segment's `batch`: its last entry's batch number


def entry_items(entry: LocalEntry) -> list[Any]:
    """An entry as segment content: its records, then per block written a
    PATCH record (a range, laid over the block as of those records: the
    same meaning the entry has) or a WholeBlock placeholder."""
    items: list[Any] = list(entry.records)
    for ino, idx, off, raw in entry.blocks:
        if off is None:
            items.append(WholeBlock(ino, idx, raw))
        else:
            items.append([PATCH, ino, idx, off, raw])
    return items


def plan_segments(todo: list[LocalEntry], *, max_bytes: int = SEGMENT_BYTES,
                  max_entries: int = SEGMENT_ENTRIES) -> list[PlannedSegment]:
    """Group the entries, in order, into as few segments as the bounds
    allow. An entry is never split: a segment is the unit of atomicity, and
    its `batch` must mean "every batch up to this one is in"."""
    out: list[PlannedSegment] = []
    cur: PlannedSegment | None = None
    size = count = 0
    for entry in todo:
        n = _payload(entry)
        if cur is None or (count and (size + n > max_bytes or count >= max_entries)):
            cur = PlannedSegment([], entry.batch)
            out.append(cur)
            size = count = 0
        cur.items.extend(entry_items(entry))
        cur.last_batch = entry.batch
        size += n
        count += 1
    return out


def segment_records(items: list[Any], refs: dict[int, tuple[bytes, int, int]]) -> list[Record]:
    """The segment's records once every WholeBlock is uploaded: `refs` maps
    id(placeholder) to the stored object's (hash, length, epoch)."""
    out: list[Record] = []
    for it in items:
        if isinstance(it, WholeBlock):
            h, n, e = refs[id(it)]
            out.append([BLOCK, it.ino, it.index, h, n] + ([e] if e else []))
        else:
            out.append(it)
    return out


def _payload(entry: LocalEntry) -> int:
    """Bytes an entry adds to a segment (block data dominates; records are
    counted at a rough 64 bytes each). Whole blocks travel as objects."""
    return 64 * len(entry.records) + sum(64 if off is None else len(raw) + 32
                                         for _, _, off, raw in entry.blocks)
