"""Recovering a crashed `durability=local` mount: the store side of the plan
made by the pure `fsd.datapath.recovery` (read it first for why this is correct).

Blocking (boto3, file I/O): the mount runs `recover_local_journal` in a
worker thread, before it claims its own epoch.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fsd import failpoints
from fsd.datapath.localjournal import LocalEntry
from fsd.datapath.recovery import (
    EpochTail,
    PlannedSegment,
    RecoveryPlan,
    WholeBlock,
    plan_recovery,
    plan_segments,
    segment_records,
)
from fsd.format import keys
from fsd.format.dataobj import HashSpec, encode_block
from fsd.format.segment import Segment
from fsd.store.base import NotFound, ObjectStore, PreconditionFailed
from fsd.volume.fencing import journal_run
from fsd.volume.objects import epoch_seal, list_epoch_seqs, list_epochs, read_segment, seal_epoch

log = logging.getLogger("ferry.recovery")


@dataclass
class RecoveryReport:
    plan: RecoveryPlan
    segments: int = 0           # segments appended to the crashed epoch
    appended: int = 0           # entries those segments carry
    fenced: bool = False        # a takeover sealed the epoch first: the rest was dropped
    seconds: float = 0.0


def read_tail(store: ObjectStore, root: str, epoch: int, seqs: list[int] | None = None) -> EpochTail:
    """Seal state, first free seq and last committed batch of one epoch, from
    a listing and a GET of the segments at its end (batches only grow)."""
    if seqs is None:
        seqs = list_epoch_seqs(store, root, epoch)
    sealed, g = epoch_seal(store, root, epoch, seqs)
    lo, _ = journal_run(seqs)
    batch = 0
    for s in range(g - 1, lo - 1, -1):
        seg = read_segment(store, root, epoch, s)
        if seg.kind == "seal":
            continue
        if seg.batch:
            batch = seg.batch
            break
        if seg.kind == "begin":
            break
    return EpochTail(epoch=epoch, sealed=sealed, next_seq=g, committed_batch=batch)


def recover_local_journal(store: ObjectStore, root: str, entries: list[LocalEntry], *,
                          own_epoch: int | None, compress: bool, content_hash: HashSpec,
                          clock: Callable[[], int] = time.time_ns) -> RecoveryReport:
    """Append what the store lacks of this cache directory's crashed epoch,
    then seal that epoch ("release"). The caller clears the local journal
    afterwards (only then: a crash before leaves the epoch to resume again)."""
    t0 = time.monotonic()
    # Of the whole volume only the newest epoch matters (claims are never
    # deleted, and an epoch's segments follow its claim); each crashed
    # epoch's tail comes from a listing of that epoch alone. So the cost
    # follows what the crashed mount wrote, not the volume's age.
    latest = max(list_epochs(store, root), default=0)
    tails = {e: read_tail(store, root, e) for e in sorted({x.epoch for x in entries})}
    plan = plan_recovery(entries, own_epoch=own_epoch, latest_epoch=latest, tails=tails)
    report = RecoveryReport(plan)
    if plan.resume is not None:
        tail = plan.resume
        segments = plan_segments(plan.todo)
        next_seq = tail.next_seq
        for seg in segments:
            if not _append(store, root, tail.epoch, next_seq, seg, compress=compress,
                           content_hash=content_hash, clock=clock):
                report.fenced = True
                break
            failpoints.hit("recovery_segment_written")
            report.segments += 1
            report.appended = sum(1 for e in plan.todo if e.batch <= seg.last_batch)
            next_seq += 1
        if not report.fenced:
            seal_epoch(store, root, tail.epoch, sealed_by=tail.epoch, reason="release", next_seq=next_seq)
    report.seconds = time.monotonic() - t0
    return report


def _append(store: ObjectStore, root: str, epoch: int, seq: int, seg: PlannedSegment, *,
            compress: bool, content_hash: HashSpec, clock: Callable[[], int]) -> bool:
    """Upload the segment's whole blocks, then write it at `seq` with
    If-None-Match. False if the key is taken by something else (a seal)."""
    blocks = [it for it in seg.items if isinstance(it, WholeBlock)]
    refs: dict[int, tuple[bytes, int, int]] = {}

    def upload(b: WholeBlock) -> None:
        h, obj = encode_block(b.raw, compress, content_hash)
        # content addressed: already there (we are still the epoch's only writer)
        with contextlib.suppress(PreconditionFailed):
            store.put(keys.data_key(root, h, epoch), obj, if_none_match=True)
        refs[id(b)] = (h, len(b.raw), epoch)

    if blocks:
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(upload, blocks))
    body = Segment(kind="segment", epoch=epoch, seq=seq, created_ns=clock(),
                   records=segment_records(seg.items, refs), batch=seg.last_batch).encode()
    key = keys.journal_key(root, epoch, seq)
    failpoints.hit("recovery_before_segment")
    try:
        store.put(key, body, if_none_match=True)
        return True
    except PreconditionFailed:
        try:
            return store.get(key) == body        # our own earlier attempt whose response was lost
        except NotFound:
            return False


def log_report(volume: str, report: RecoveryReport) -> None:
    plan = report.plan
    if plan.dropped:
        log.error("volume %s: dropping %d locally acknowledged batch(es) of epoch(s) %s: another mount "
                  "owned the volume since, so they can no longer be applied (durability=local keeps "
                  "what was not uploaded only on the same host, and only until someone else mounts)",
                  volume, len(plan.dropped), plan.dropped_epochs)
    if report.fenced:
        log.error("volume %s: a takeover sealed epoch %d while its local batches were being recovered; "
                  "%d of %d batch(es) were appended before it, the rest is dropped", volume,
                  plan.resume.epoch if plan.resume else 0, report.appended, len(plan.todo))
    elif plan.resume is not None:
        log.info("volume %s: recovered %d locally acknowledged batch(es) of epoch %d in %d segment(s) "
                 "(%.2f s); %d were in the store already", volume, len(plan.todo), plan.resume.epoch,
                 report.segments, report.seconds, plan.already)
