"""Volume-level storage operations: mkfs, claim an epoch, seal older epochs,
rebuild the metadata from snapshot + journal.

These are synchronous (they run in a worker thread when called from trio,
or directly from CLI commands such as fsck and inspect). The decisions they
act on live in the pure module `fsd.fencing`.
"""
from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Collection
from dataclasses import dataclass, field

from fsd import failpoints, fencing
from fsd.format import keys
from fsd.format.claim import EpochClaim
from fsd.format.framing import CorruptObject
from fsd.format.segment import Segment
from fsd.format.snapshot import decode_snapshot, encode_snapshot
from fsd.format.superblock import Superblock, make_superblock
from fsd.meta.state import MetaState, new_volume_records
from fsd.store import probe
from fsd.store.base import NotFound, ObjectStore, PreconditionFailed

log = logging.getLogger("ferry.volume")


class VolumeError(Exception):
    """A volume-level failure with a message for the user (exit 1)."""


def _now_ns() -> int:
    return time.time_ns()


def read_superblock(store: ObjectStore, volume: str) -> Superblock:
    key = keys.superblock_key(volume)
    try:
        data = store.get(key)
    except NotFound:
        raise VolumeError(
            f"volume {volume!r} does not exist in {store.url}; create it with "
            f"'ferry fs mkfs --store {store.url} {volume}'"
        ) from None
    return Superblock.decode(data, key)


def check_fencing_support(store: ObjectStore, allow_unfenced: bool) -> str:
    """Return the fencing mode, refusing stores without conditional writes
    unless the user explicitly accepted lease-timing-only fencing."""
    if probe.probe_conditional_writes(store):
        return "conditional"
    if allow_unfenced:
        log.warning(
            "%s does not honour conditional writes (If-None-Match); continuing with "
            "timing-only fencing as requested: a partitioned old owner could corrupt the journal",
            store.url,
        )
        return "timing"
    raise VolumeError(
        f"{store.url} does not honour conditional writes (If-None-Match: *), which ferry "
        f"needs to guarantee a single writer. Use a store that does (AWS S3, MinIO, "
        f"Ceph RGW, R2, ...) or pass --allow-unfenced-store to accept timing-only fencing."
    )


def mkfs(store: ObjectStore, volume: str, options: dict[str, str], *, allow_unfenced: bool = False) -> Superblock:
    """Create a volume: superblock, epoch 1 claim, and a begin segment holding the root."""
    keys.validate_volume_name(volume)
    fencing_mode = check_fencing_support(store, allow_unfenced)
    try:
        sb = make_superblock(volume, options, _now_ns())
    except ValueError as e:
        raise VolumeError(str(e)) from None
    sb.fencing = fencing_mode
    try:
        store.put(keys.superblock_key(volume), sb.encode(), if_none_match=True)
    except PreconditionFailed:
        raise VolumeError(f"volume {volume!r} already exists in {store.url}") from None
    claim = EpochClaim(epoch=1, host=socket.gethostname(), pid=os.getpid(),
                       token=secrets.token_hex(16), claimed_ns=_now_ns(), takeover=False)
    store.put(keys.epoch_key(volume, 1), claim.encode(), if_none_match=True)
    begin = Segment(kind="begin", epoch=1, seq=1, created_ns=_now_ns(),
                    records=new_volume_records(_now_ns()), reason=None, sealed_by=None)
    store.put(keys.journal_key(volume, 1, 1), begin.encode(), if_none_match=True)
    seal = Segment(kind="seal", epoch=1, seq=2, created_ns=_now_ns(), records=[],
                   reason="release", sealed_by=1)
    store.put(keys.journal_key(volume, 1, 2), seal.encode(), if_none_match=True)
    return sb


# ---------------------------------------------------------------- journal view


@dataclass
class JournalView:
    """What the store holds for one volume's journal, read once."""

    epochs: list[int]                                  # claimed epochs, ascending
    seqs: dict[int, list[int]] = field(default_factory=dict)  # epoch -> seqs present
    snapshots: list[tuple[int, int]] = field(default_factory=list)

    @property
    def latest_epoch(self) -> int:
        e = max(self.epochs, default=0)
        return max([e, *self.seqs.keys()])


def list_journal(store: ObjectStore, volume: str) -> JournalView:
    epochs = sorted(e for k in store.list(keys.epochs_prefix(volume))
                    if (e := keys.parse_epoch_key(volume, k)) is not None)
    view = JournalView(epochs=epochs)
    for k in store.list(keys.journal_prefix(volume)):
        p = keys.parse_journal_key(volume, k)
        if p is not None:
            view.seqs.setdefault(p[0], []).append(p[1])
    for k in store.list(keys.snapshots_prefix(volume)):
        p = keys.parse_snapshot_key(volume, k)
        if p is not None:
            view.snapshots.append(p)
    view.snapshots.sort()
    return view


def read_segment(store: ObjectStore, volume: str, epoch: int, seq: int) -> Segment:
    key = keys.journal_key(volume, epoch, seq)
    return Segment.decode(store.get(key), key)


def read_claim(store: ObjectStore, volume: str, epoch: int) -> EpochClaim | None:
    key = keys.epoch_key(volume, epoch)
    try:
        return EpochClaim.decode(store.get(key), key)
    except NotFound:
        return None


def epoch_seal(store: ObjectStore, volume: str, epoch: int, seqs: list[int]) -> tuple[bool, int]:
    """(sealed?, first free seq) for one epoch, reading only its last object."""
    g = fencing.first_gap(seqs)
    if g == 1:
        return False, 1
    # Only the object just before the first gap can be a seal that ends the
    # readable prefix, except for a seal earlier (which would make the later
    # ones unreadable); check the prefix properly when sealing matters.
    last = read_segment(store, volume, epoch, g - 1)
    if last.kind == "seal":
        return True, g
    # In parallel: an epoch of a long-lived mount has thousands of segments,
    # and a takeover (or a release) must not cost one GET round trip each.
    with ThreadPoolExecutor(max_workers=16) as pool:
        kinds = pool.map(lambda s: read_segment(store, volume, epoch, s).kind, range(1, g - 1))
        if any(k == "seal" for k in kinds):
            return True, g
    return False, g


def seal_epoch(store: ObjectStore, volume: str, epoch: int, *, sealed_by: int, reason: str,
               next_seq: int | None = None) -> int:
    """Write a seal at the first free seq of `epoch`; re-list and retry on
    conflict (the old owner may be committing at that very moment).
    Returns the seal's seq.

    `next_seq`: the epoch's own writer releasing it knows where its journal
    ends; one conditional PUT there is enough. If that key is taken, someone
    sealed the epoch first, and the general path finds out where."""
    if next_seq is not None and _put_seal(store, volume, epoch, next_seq, sealed_by, reason):
        return next_seq
    for _ in range(1000):
        seqs = [s for k in store.list(keys.journal_prefix(volume, epoch))
                if (p := keys.parse_journal_key(volume, k)) and p[0] == epoch for s in [p[1]]]
        sealed, g = epoch_seal(store, volume, epoch, seqs)
        if sealed:
            return g - 1
        if _put_seal(store, volume, epoch, g, sealed_by, reason):
            return g
    raise VolumeError(f"could not seal epoch {epoch} of {volume!r}: its owner keeps writing")


def _put_seal(store: ObjectStore, volume: str, epoch: int, seq: int, sealed_by: int, reason: str) -> bool:
    """Conditionally create the seal of `epoch` at `seq`; False if the key is taken."""
    seal = Segment(kind="seal", epoch=epoch, seq=seq, created_ns=_now_ns(), records=[],
                   reason=reason, sealed_by=sealed_by)
    try:
        store.put(keys.journal_key(volume, epoch, seq), seal.encode(), if_none_match=True)
    except PreconditionFailed:
        return False
    log.info("volume %s: sealed epoch %d at seq %d (%s)", volume, epoch, seq, reason)
    return True


# ------------------------------------------------------------------ open/claim


@dataclass
class OpenedVolume:
    superblock: Superblock
    epoch: int
    next_seq: int
    token: str
    state: MetaState
    last_committed: tuple[int, int]      # (epoch, seq) of the last replayed segment
    segments_since_snapshot: int


def claim_epoch(
    store: ObjectStore,
    volume: str,
    *,
    cache_tokens: Collection[str],
    takeover: bool,
    token: str | None = None,
) -> tuple[int, str]:
    """Claim the next epoch by conditional create; seal what needs sealing;
    write our begin segment. Returns (epoch, token). `token` is the claim's
    proof of ownership (a new random one if not given): a mount writes it
    into its cache dir before claiming."""
    view = list_journal(store, volume)
    latest = view.latest_epoch
    sealed = True
    claim = None
    if latest:
        sealed, _ = epoch_seal(store, volume, latest, view.seqs.get(latest, []))
        claim = read_claim(store, volume, latest)
    decision = fencing.decide_mount(
        volume=volume,
        latest_epoch=latest,
        latest_sealed=sealed,
        latest_host=claim.host if claim else None,
        latest_token=claim.token if claim else None,
        cache_tokens=cache_tokens,
        takeover=takeover,
    )
    if not decision.allowed:
        raise VolumeError(decision.reason)
    epoch = latest + 1
    token = token or secrets.token_hex(16)
    mine = EpochClaim(epoch=epoch, host=socket.gethostname(), pid=os.getpid(), token=token,
                      claimed_ns=_now_ns(), takeover=decision.needs_seal)
    try:
        store.put(keys.epoch_key(volume, epoch), mine.encode(), if_none_match=True)
    except PreconditionFailed:
        other = read_claim(store, volume, epoch)
        raise VolumeError(
            f"another mount of {volume!r} (host {other.host if other else 'unknown'}) claimed "
            f"epoch {epoch} at the same moment; only one may own the volume. Try again once it "
            f"has released it."
        ) from None
    failpoints.hit("after_epoch_claimed")
    log.info("volume %s: claimed epoch %d (%s)", volume, epoch, decision.reason)
    # Seal every older epoch that is not sealed yet, newest first, stopping at
    # an epoch that began: its owner had sealed everything below it.
    for e in range(epoch - 1, 0, -1):
        seqs = [p[1] for k in store.list(keys.journal_prefix(volume, e))
                if (p := keys.parse_journal_key(volume, k)) and p[0] == e]
        is_sealed, _ = epoch_seal(store, volume, e, seqs)
        if not is_sealed:
            seal_epoch(store, volume, e, sealed_by=epoch, reason="takeover")
        if 1 in seqs and read_segment(store, volume, e, 1).kind == "begin":
            break
    begin = Segment(kind="begin", epoch=epoch, seq=1, created_ns=_now_ns(), records=[],
                    reason=None, sealed_by=None)
    try:
        store.put(keys.journal_key(volume, epoch, 1), begin.encode(), if_none_match=True)
    except PreconditionFailed:
        raise VolumeError(f"epoch {epoch} of {volume!r} was sealed before it began: another mount took over") from None
    return epoch, token


@dataclass
class LoadResult:
    state: MetaState
    last: tuple[int, int]            # (epoch, seq) of the last replayed segment
    replayed: int                    # segments replayed after the snapshot
    source: str = "journal"          # where replay started: "snapshot", "local" or "journal"


def load_state(store: ObjectStore, volume: str, sb: Superblock, local=None) -> LoadResult:
    """Best valid starting point + replay of every later replayable segment.

    Starting points: remote snapshots, and `local` (a `fsd.localdb.WorkingCopy`
    of this cache directory), newest first. One is valid only if the segment
    it is keyed at exists and is not a seal: a snapshot is written only after
    its segment committed, and our writers never skip a seq, so no seal can
    precede a non-seal segment at (e, s)."""
    view = list_journal(store, volume)
    candidates = [(e, s, "snapshot") for e, s in view.snapshots]
    local_pos = local.position(sb.uuid) if local is not None else None
    if local_pos is not None:
        candidates.append((local_pos[0], local_pos[1], "local"))
    candidates.sort(key=lambda c: (c[0], c[1], c[2] == "local"), reverse=True)
    state: MetaState | None = None
    start: tuple[int, int] = (0, 0)
    source = "journal"
    for e, s, kind in candidates:
        if s not in view.seqs.get(e, []):
            continue
        try:
            seg = read_segment(store, volume, e, s)
            if seg.kind == "seal":
                continue
            if kind == "local":
                state = local.load()
            else:
                key = keys.snapshot_key(volume, e, s)
                _se, _ss, next_ino, records = decode_snapshot(store.get(key), key)
                state = MetaState.from_records(sb.block_size, records)
                state.next_ino = max(state.next_ino, next_ino)
        except (CorruptObject, NotFound) as exc:
            log.warning("volume %s: ignoring %s at %d-%d: %s", volume, kind, e, s, exc)
            continue
        except Exception as exc:  # a damaged local database must not prevent mounting
            log.warning("volume %s: ignoring %s at %d-%d: %r", volume, kind, e, s, exc)
            state = None
            continue
        start = (e, s)
        source = kind
        break
    if state is None:
        state = MetaState(sb.block_size)
    last = start
    replayed = 0
    for e in sorted(view.seqs):
        if e < start[0]:
            continue
        # Epoch start[0] was verified readable up to start[1] above; every
        # later epoch is read from seq 1. Stop at the first hole or seal.
        s = start[1] + 1 if e == start[0] else 1
        kinds: dict[int, str] = {x: "segment" for x in range(1, s)}
        segs: dict[int, Segment] = {}
        present = set(view.seqs[e])
        while s in present:
            seg = read_segment(store, volume, e, s)
            kinds[s] = seg.kind
            segs[s] = seg
            if seg.kind == "seal":
                break
            s += 1
        to_replay, _seal = fencing.replayable_prefix(kinds)
        for s in to_replay:
            if (e, s) <= start:
                continue
            state.apply_all(segs[s].records)
            last = (e, s)
            replayed += 1
    return LoadResult(state, last, replayed, source)


def write_snapshot(store: ObjectStore, volume: str, epoch: int, seq: int, state: MetaState,
                   records: list | None = None) -> None:
    """Upload a snapshot of `state` as of segment (epoch, seq).

    The caller guarantees `state` equals the replay of every segment up to
    (epoch, seq) and nothing more."""
    recs = records if records is not None else list(state.snapshot_records())
    data = encode_snapshot(epoch, seq, state.next_ino, recs)
    failpoints.hit("before_snapshot_put")
    try:
        store.put(keys.snapshot_key(volume, epoch, seq), data, if_none_match=True)
    except PreconditionFailed:
        pass  # already there: snapshots are deterministic for a position
