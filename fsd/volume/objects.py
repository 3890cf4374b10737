"""Volume-level storage operations: mkfs, claim an epoch, seal older epochs,
rebuild the metadata from snapshot + journal.

These are synchronous (they run in a worker thread when called from trio,
or directly from CLI commands such as fsck and inspect). The decisions they
act on live in the pure module `fsd.volume.fencing`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fsd import failpoints
from fsd.format import keys
from fsd.format.claim import EpochClaim
from fsd.format.framing import CorruptObject
from fsd.format.incarnation import Incarnation
from fsd.format.segment import Segment
from fsd.format.snapshot import decode_snapshot, encode_snapshot
from fsd.format.superblock import Superblock, make_superblock
from fsd.meta.state import MetaState, new_volume_records, own_refs_of_records
from fsd.store import probe
from fsd.store.base import NotFound, ObjectStore, PreconditionFailed
from fsd.store.sealing import adopt_root, new_encryption
from fsd.volume import fencing

log = logging.getLogger("ferry.volume")


class VolumeError(Exception):
    """A volume-level failure with a message for the user (exit 1)."""


def _now_ns() -> int:
    return time.time_ns()


# ----------------------------------------------------------- names and roots


@dataclass(frozen=True)
class VolumeRef:
    """Where a volume's objects are: its name and its root (key prefix).

    Format 2 roots are `NAME/UUID`, one per incarnation: a name that is
    removed and created again gets a new root, so nothing of the old volume
    can show in the new one. A format-1 volume's root is its name
    (incarnation 0)."""

    name: str
    root: str
    incarnation: int


def list_incarnations(store: ObjectStore, name: str) -> list[int]:
    return sorted(n for k in store.list(keys.incarnations_prefix(name))
                  if (n := keys.parse_incarnation_key(name, k)) is not None)


def read_incarnation(store: ObjectStore, name: str, n: int) -> Incarnation | None:
    key = keys.incarnation_key(name, n)
    try:
        inc = Incarnation.decode(store.get(key), key)
    except NotFound:
        return None
    if inc.name != name or inc.n != n:
        raise CorruptObject(f"{key}: names incarnation {inc.n} of {inc.name!r}")
    return inc


def find_volume(store: ObjectStore, name: str) -> VolumeRef | None:
    """The current volume of `name`: its highest incarnation, or a format-1
    volume if the name has no incarnation. None if there is neither. The
    volume may be removed or being removed (see `is_removed`)."""
    for n in reversed(list_incarnations(store, name)):
        inc = read_incarnation(store, name, n)
        if inc is not None:
            return VolumeRef(name, keys.volume_root(name, inc.uuid), n)
    if store.head(keys.superblock_key(name)) is not None:
        return VolumeRef(name, name, 0)
    return None


def holder_exists(store: ObjectStore, root: str) -> bool:
    """Is `root` (NAME/UUID) a created volume: does an incarnation record of
    NAME name UUID? (A clone whose creator died before its incarnation
    record is not; fsd/backup/clones.py.) A format-1 root (a bare name) is one if
    its superblock exists."""
    name, _, uuid = root.partition("/")
    if not uuid:
        return store.head(keys.superblock_key(root)) is not None
    for n in list_incarnations(store, name):
        inc = read_incarnation(store, name, n)
        if inc is not None and inc.uuid == uuid:
            return True
    return False


def ref_of_root(store: ObjectStore, root: str) -> VolumeRef | None:
    """The VolumeRef of a root, if an incarnation record (or, format 1, a superblock) still names it."""
    name, _, uuid = root.partition("/")
    if not uuid:
        return VolumeRef(name, name, 0) if store.head(keys.superblock_key(root)) is not None else None
    for n in list_incarnations(store, name):
        inc = read_incarnation(store, name, n)
        if inc is not None and inc.uuid == uuid:
            return VolumeRef(name, root, n)
    return None


def read_superblock(store: ObjectStore, ref: VolumeRef) -> Superblock:
    key = keys.superblock_key(ref.root)
    try:
        data = store.get(key)
    except NotFound:
        raise VolumeError(f"volume {ref.name!r} is being removed (its superblock is gone); finish the "
                          f"removal with 'ferry fs rm --store {store.url} {ref.name}'") from None
    return Superblock.decode(data, key)


def locate(store: ObjectStore, name: str) -> tuple[VolumeRef, Superblock]:
    """The current volume of `name` and its superblock; VolumeError with
    advice if there is none. An encrypted volume's key is checked here, so
    a missing or wrong key is one clear error before anything is read."""
    keys.validate_volume_name(name)
    ref = find_volume(store, name)
    if ref is None:
        raise VolumeError(
            f"volume {name!r} does not exist in {store.url}; create it with "
            f"'ferry fs mkfs --store {store.url} {name}'"
        )
    sb = read_superblock(store, ref)
    adopt_root(store, ref.root, sb)      # no second read of it; KeyUnavailable / KeyError_ naming the key to give
    return ref, sb


def latest_claim(store: ObjectStore, root: str) -> EpochClaim | None:
    epochs = list_epochs(store, root)
    return read_claim(store, root, epochs[-1]) if epochs else None


def is_removed(store: ObjectStore, ref: VolumeRef) -> bool:
    """Removed or being removed: its newest claim is a removal, or its
    superblock is already deleted."""
    if store.head(keys.superblock_key(ref.root)) is None:
        return True
    claim = latest_claim(store, ref.root)
    return claim is not None and claim.purpose == "remove"


def live_volume(store: ObjectStore, name: str) -> VolumeRef | None:
    """The name's current volume unless it is removed or being removed."""
    ref = find_volume(store, name)
    return None if ref is None or is_removed(store, ref) else ref


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


def mkfs(store: ObjectStore, volume: str, options: dict[str, str], *,
         allow_unfenced: bool = False) -> tuple[VolumeRef, Superblock]:
    """Create a volume: a new root holding the superblock, the epoch 1
    claim, a begin segment with the root directory and a release seal, then
    the incarnation record that makes it the name's volume.

    A name whose volume was removed (or is still being removed) gets a new
    incarnation: an empty volume under a new root. The incarnation record
    is written last, with `If-None-Match: *`: a crash before it leaves only
    an unreferenced root, and of two concurrent creates exactly one wins."""
    keys.validate_volume_name(volume)
    fencing_mode = check_fencing_support(store, allow_unfenced)
    try:
        sb = make_superblock(volume, options, _now_ns(), encryption=new_encryption(store, options))
    except ValueError as e:
        raise VolumeError(str(e)) from None
    sb.fencing = fencing_mode
    if live_volume(store, volume) is not None:
        raise VolumeError(f"volume {volume!r} already exists in {store.url}")
    root = keys.volume_root(volume, sb.uuid)
    write_root(store, root, sb, new_volume_records(_now_ns()))
    failpoints.hit("mkfs_before_incarnation")
    return commit_incarnation(store, volume, sb), sb


def write_root(store: ObjectStore, root: str, sb: Superblock, records: list) -> None:
    """Everything of a new volume under its root: the superblock, the epoch 1
    claim, a begin segment holding `records` (its whole initial state) and a
    release seal. Nothing refers to the root yet (`commit_incarnation` does)."""
    store.put(keys.superblock_key(root), sb.encode(), if_none_match=True)
    claim = EpochClaim(epoch=1, host=socket.gethostname(), pid=os.getpid(),
                       token=secrets.token_hex(16), claimed_ns=_now_ns(), takeover=False)
    store.put(keys.epoch_key(root, 1), claim.encode(), if_none_match=True)
    begin = Segment(kind="begin", epoch=1, seq=1, created_ns=_now_ns(), records=records, reason=None,
                    sealed_by=None)
    store.put(keys.journal_key(root, 1, 1), begin.encode(), if_none_match=True)
    seal = Segment(kind="seal", epoch=1, seq=2, created_ns=_now_ns(), records=[],
                   reason="release", sealed_by=1)
    store.put(keys.journal_key(root, 1, 2), seal.encode(), if_none_match=True)


def commit_incarnation(store: ObjectStore, volume: str, sb: Superblock) -> VolumeRef:
    """Make the root written by `write_root` the name's volume: the next
    incarnation record, created with `If-None-Match: *`. Of two creates of
    one name exactly one wins; the loser's root is deleted."""
    n = max(list_incarnations(store, volume), default=0) + 1
    root = keys.volume_root(volume, sb.uuid)
    inc = Incarnation(name=volume, n=n, uuid=sb.uuid, created_ns=_now_ns())
    try:
        store.put(keys.incarnation_key(volume, n), inc.encode(), if_none_match=True)
    except PreconditionFailed:
        delete_all(store, root)
        raise VolumeError(f"volume {volume!r} was created in {store.url} by someone else at the same "
                          f"moment") from None
    # A removal finishing meanwhile may have let another create pick a
    # different number: the highest incarnation is the volume, so if ours
    # is not it, ours must go.
    if max(list_incarnations(store, volume), default=0) != n:
        delete_all(store, root)
        store.delete(keys.incarnation_key(volume, n))
        raise VolumeError(f"volume {volume!r} was created in {store.url} by someone else at the same "
                          f"moment")
    return VolumeRef(volume, root, n)


def delete_all(store: ObjectStore, prefix: str) -> None:
    """Delete every object under a root that never became a volume."""
    store.delete_many(list(store.list(prefix + "/")))


# ---------------------------------------------------------------- journal view


@dataclass
class JournalView:
    """What the store holds for one volume's journal, read once."""

    epochs: list[int]                                  # claimed epochs, ascending
    seqs: dict[int, list[int]] = field(default_factory=dict)  # epoch -> seqs present
    snapshots: list[tuple[int, int]] = field(default_factory=list)
    listed_from: tuple[int, int] = (0, 0)      # journal keys before this position were not listed

    @property
    def latest_epoch(self) -> int:
        e = max(self.epochs, default=0)
        return max([e, *self.seqs.keys()])

    @property
    def horizon(self) -> int:
        """Every epoch below this one is sealed and may be compacted away:
        a snapshot at (E, s) exists only once E had begun, and a begin
        proves every older epoch sealed (docs/format.md, rule 1)."""
        return self.snapshots[-1][0] if self.snapshots else 0


def list_epochs(store: ObjectStore, root: str) -> list[int]:
    return sorted(e for k in store.list(keys.epochs_prefix(root))
                  if (e := keys.parse_epoch_key(root, k)) is not None)


def list_epoch_seqs(store: ObjectStore, root: str, epoch: int, from_seq: int = 1) -> list[int]:
    """Seqs present in one epoch, from `from_seq` on (a LIST that starts there)."""
    after = keys.journal_key(root, epoch, from_seq - 1) if from_seq > 1 else ""
    return [p[1] for k in store.list(keys.journal_prefix(root, epoch), after)
            if (p := keys.parse_journal_key(root, k)) and p[0] == epoch]


def list_journal(store: ObjectStore, root: str, *, tail: bool = False) -> JournalView:
    """The volume's claims, snapshots and journal keys. With `tail`, journal
    keys before the newest snapshot's position are not listed: what a mount
    or a takeover needs costs LIST pages in proportion to the journal after
    the newest snapshot, not to the whole journal (the dead owner of a
    volume under heavy write may leave a very long epoch behind)."""
    view = JournalView(epochs=list_epochs(store, root))
    for k in store.list(keys.snapshots_prefix(root)):
        p = keys.parse_snapshot_key(root, k)
        if p is not None:
            view.snapshots.append(p)
    view.snapshots.sort()
    start_after = ""
    if tail and view.snapshots:
        e, s = view.snapshots[-1]
        start_after = keys.journal_key(root, e, s - 1)
        view.listed_from = (e, s)
    for k in store.list(keys.journal_prefix(root), start_after):
        p = keys.parse_journal_key(root, k)
        if p is not None:
            view.seqs.setdefault(p[0], []).append(p[1])
    return view


def read_segment(store: ObjectStore, root: str, epoch: int, seq: int) -> Segment:
    key = keys.journal_key(root, epoch, seq)
    return Segment.decode(store.get(key), key)


def read_claim(store: ObjectStore, root: str, epoch: int) -> EpochClaim | None:
    key = keys.epoch_key(root, epoch)
    try:
        return EpochClaim.decode(store.get(key), key)
    except NotFound:
        return None


def epoch_seal(store: ObjectStore, root: str, epoch: int, seqs: list[int]) -> tuple[bool, int]:
    """(sealed?, first free seq) for one epoch, reading only its last object.

    A seal is always the last key of its epoch: it is written at the first
    gap, and a writer only ever writes at the first gap too, so whoever
    comes second gets 412. One GET at the end of the run therefore decides,
    however long the epoch (and whatever GC deleted at its front)."""
    lo, g = fencing.journal_run(seqs)
    if g == lo:
        return False, g
    return read_segment(store, root, epoch, g - 1).kind == "seal", g


def seal_epoch(store: ObjectStore, root: str, epoch: int, *, sealed_by: int, reason: str,
               next_seq: int | None = None, from_seq: int = 1) -> int:
    """Write a seal at the first free seq of `epoch`; re-list and retry on
    conflict (the old owner may be committing at that very moment).
    Returns the seal's seq.

    `next_seq`: the epoch's own writer releasing it knows where its journal
    ends; one conditional PUT there is enough. If that key is taken, someone
    sealed the epoch first, and the general path finds out where."""
    if next_seq is not None and _put_seal(store, root, epoch, next_seq, sealed_by, reason):
        return next_seq
    for _ in range(1000):
        sealed, g = epoch_seal(store, root, epoch, list_epoch_seqs(store, root, epoch, from_seq))
        if sealed:
            return g - 1
        if _put_seal(store, root, epoch, g, sealed_by, reason):
            return g
    raise VolumeError(f"could not seal epoch {epoch} of {root!r}: its owner keeps writing")


def _put_seal(store: ObjectStore, root: str, epoch: int, seq: int, sealed_by: int, reason: str) -> bool:
    """Conditionally create the seal of `epoch` at `seq`; False if the key is taken."""
    seal = Segment(kind="seal", epoch=epoch, seq=seq, created_ns=_now_ns(), records=[],
                   reason=reason, sealed_by=sealed_by)
    try:
        store.put(keys.journal_key(root, epoch, seq), seal.encode(), if_none_match=True)
    except PreconditionFailed:
        return False
    log.info("volume %s: sealed epoch %d at seq %d (%s)", root, epoch, seq, reason)
    return True


# ------------------------------------------------------------------ open/claim


def claim_epoch(
    store: ObjectStore,
    root: str,
    *,
    cache_tokens: Collection[str],
    takeover: bool,
    token: str | None = None,
    purpose: str = "mount",
) -> tuple[int, str]:
    """Claim the next epoch by conditional create; seal what needs sealing;
    write our begin segment (a mount) or nothing more (a removal). Returns
    (epoch, token). `token` is the claim's proof of ownership (a new random
    one if not given): a mount writes it into its cache dir before claiming."""
    view = list_journal(store, root, tail=True)
    latest = view.latest_epoch
    sealed = True
    claim = None
    if latest:
        sealed, _ = epoch_seal(store, root, latest, view.seqs.get(latest, []))
        claim = read_claim(store, root, latest)
    name = root.split("/", 1)[0]
    decision = fencing.decide_mount(
        volume=name,
        latest_epoch=latest,
        latest_sealed=sealed,
        latest_host=claim.host if claim else None,
        latest_token=claim.token if claim else None,
        cache_tokens=cache_tokens,
        takeover=takeover,
        latest_purpose=claim.purpose if claim else "mount",
    )
    if not decision.allowed:
        raise VolumeError(decision.reason)
    epoch = latest + 1
    token = token or secrets.token_hex(16)
    mine = EpochClaim(epoch=epoch, host=socket.gethostname(), pid=os.getpid(), token=token,
                      claimed_ns=_now_ns(), takeover=decision.needs_seal, purpose=purpose)
    try:
        store.put(keys.epoch_key(root, epoch), mine.encode(), if_none_match=True)
    except PreconditionFailed:
        other = read_claim(store, root, epoch)
        raise VolumeError(
            f"another mount of {name!r} (host {other.host if other else 'unknown'}) claimed "
            f"epoch {epoch} at the same moment; only one may own the volume. Try again once it "
            f"has released it."
        ) from None
    failpoints.hit("after_epoch_claimed")
    log.info("volume %s: claimed epoch %d for %s (%s)", name, epoch, purpose, decision.reason)
    # Seal every older epoch that is not sealed yet, newest first, stopping at
    # an epoch that began (its owner had sealed everything below it) or at
    # the horizon below which GC may have compacted sealed epochs away.
    # The listing above covers every epoch from the horizon on (the horizon's
    # own from its newest snapshot); keys written since are found by the
    # seal's conditional PUT, which re-lists from the last known seq.
    for e in range(epoch - 1, max(view.horizon, 1) - 1, -1):
        seqs = view.seqs.get(e, [])
        is_sealed, g = epoch_seal(store, root, e, seqs)
        if not is_sealed:
            seal_epoch(store, root, e, sealed_by=epoch, reason="remove" if purpose == "remove" else "takeover",
                       from_seq=max(1, g - 1))
        if 1 in seqs and read_segment(store, root, e, 1).kind == "begin":
            break
    if purpose == "remove":
        return epoch, token
    begin = Segment(kind="begin", epoch=epoch, seq=1, created_ns=_now_ns(), records=[],
                    reason=None, sealed_by=None)
    try:
        store.put(keys.journal_key(root, epoch, 1), begin.encode(), if_none_match=True)
    except PreconditionFailed:
        raise VolumeError(f"epoch {epoch} of {name!r} was sealed before it began: another mount took over") from None
    return epoch, token


@dataclass
class LoadResult:
    state: MetaState
    last: tuple[int, int]            # (epoch, seq) of the last replayed segment
    replayed: int                    # segments replayed after the snapshot
    source: str = "journal"          # where replay started: "snapshot", "local" or "journal"
    start: tuple[int, int] = (0, 0)  # position of that starting point
    # (hash, epoch) of every data object a replayed segment referenced
    replayed_refs: set[tuple[bytes, int]] = field(default_factory=set)
    # Journal segments after the newest snapshot in the store: what the next
    # snapshot is due by. Not `replayed`: a mount from the local working copy
    # replays only a few, and a volume remounted often after crashes would
    # then never snapshot, and every listing and takeover would grow with it.
    since_snapshot: int = 0
    # The local working copy was advanced through the replay (`local` source
    # only): it equals `state` at `last`, so the mount need not rewrite it.
    local_advanced: bool = False


def load_state(store: ObjectStore, root: str, sb: Superblock, local=None, *, attempts: int = 3) -> LoadResult:
    """Best valid starting point + replay of every later replayable segment.

    A GC running at the same moment may delete segments between our listing
    and our reads; that shows as a missing object or a broken chain, and
    the load starts over from a fresh listing (it then finds the newer
    snapshot that GC kept)."""
    for attempt in range(attempts):
        try:
            # First from a listing of the journal's tail (after the newest
            # snapshot), then, should that snapshot be unusable, of all of it.
            return _load_state_once(store, root, sb, local, tail=attempt == 0)
        except _Retry as e:
            if attempt == attempts - 1:
                raise VolumeError(f"volume {root}: cannot rebuild the metadata: {e}. The journal is "
                                  f"incomplete; run 'ferry fs fsck' and report it.") from None
            log.info("volume %s: journal changed while loading (%s); loading again", root, e)
    raise AssertionError("unreachable")


class _Retry(Exception):
    pass


def _load_state_once(store: ObjectStore, root: str, sb: Superblock, local, *, tail: bool = False) -> LoadResult:
    """Starting points: remote snapshots, and `local` (a `fsd.datapath.localdb.WorkingCopy`
    of this cache directory), newest first. One is valid only if the segment
    it is keyed at exists and is not a seal (a snapshot is written only after
    its segment committed, and our writers never skip a seq, so no seal can
    precede a non-seal segment at (e, s)), and if every segment after it is
    still there (`fencing.chain_breaks`)."""
    view = list_journal(store, root, tail=tail)
    latest = view.latest_epoch
    candidates = [(e, s, "snapshot") for e, s in view.snapshots]
    local_pos = local.position(sb.uuid) if local is not None else None
    if local_pos is not None:
        candidates.append((local_pos[0], local_pos[1], "local"))
    candidates.sort(key=lambda c: (c[0], c[1], c[2] == "local"), reverse=True)
    candidates.append((0, 0, "journal"))
    state: MetaState | None = None
    start: tuple[int, int] = (0, 0)
    source = "journal"
    broken: list[str] = []
    for e, s, kind in candidates:
        why = fencing.chain_breaks((e, s), view.seqs, view.epochs, latest)
        if why is not None:
            broken.append(f"{kind} at {e}-{s}: {why}")
            continue
        if kind == "journal":
            state = MetaState(sb.block_size)
            break
        if s not in view.seqs.get(e, []):
            continue
        try:
            seg = read_segment(store, root, e, s)
            if seg.kind == "seal":
                continue
            if kind == "local":
                state = local.load()
            else:
                key = keys.snapshot_key(root, e, s)
                _se, _ss, next_ino, records = decode_snapshot(store.get(key), key)
                state = MetaState.from_records(sb.block_size, records)
                state.next_ino = max(state.next_ino, next_ino)
        except (CorruptObject, NotFound) as exc:
            log.warning("volume %s: ignoring %s at %d-%d: %s", root, kind, e, s, exc)
            continue
        except Exception as exc:  # a damaged local database must not prevent mounting
            log.warning("volume %s: ignoring %s at %d-%d: %r", root, kind, e, s, exc)
            state = None
            continue
        start = (e, s)
        source = kind
        break
    if state is None:
        raise _Retry("no starting point is complete: " + "; ".join(broken))
    last = start
    replayed = 0
    refs: set[tuple[bytes, int]] = set()
    advancing = source == "local"
    for pos, seg in replayable_after(store, root, view, start):
        state.apply_all(seg.records)
        if advancing:
            advancing = _advance_local(local, seg.records, pos)
        refs |= own_refs_of_records(seg.records)
        last = pos
        replayed += 1
    return LoadResult(state, last, replayed, source, start, refs,
                      since_snapshot=segments_after(view, view.snapshots[-1] if view.snapshots else (0, 0)),
                      local_advanced=advancing)


def _advance_local(local, records: list, pos: tuple[int, int]) -> bool:
    """Apply one replayed segment to the working copy the load started from,
    so that the mount need not rewrite the whole copy (its cost grew with the
    volume). False, and the copy left as it was (each apply is atomic), if
    that fails: the mount then rewrites it from the loaded state."""
    try:
        local.apply_segment(records, pos)
        return True
    except Exception as e:  # noqa: BLE001 - an accelerator: the store is the truth
        log.warning("local working copy: cannot apply segment %d-%d (%r); it will be rewritten", *pos, e)
        return False


def segments_after(view: JournalView, pos: tuple[int, int]) -> int:
    """Journal keys listed in `view` after position `pos`."""
    return sum(1 for e, seqs in view.seqs.items() for s in seqs if (e, s) > pos)


def replayable_after(store: ObjectStore, root: str, view: JournalView, start: tuple[int, int]
                     ) -> Iterator[tuple[tuple[int, int], Segment]]:
    """The committed segments after `start`, in journal order: for each
    epoch from start's on, its run of consecutive seqs up to the first hole
    or seal (what a fenced writer may have left beyond is not part of the
    volume). The caller has checked the chain from `start` is unbroken
    (`fencing.chain_breaks`)."""
    for e in sorted(view.seqs):
        if e < start[0]:
            continue
        # Epoch start[0] was verified readable up to start[1]; every later
        # epoch is read from seq 1. Stop at the first hole or seal.
        s = start[1] + 1 if e == start[0] else 1
        kinds: dict[int, str] = {x: "segment" for x in range(1, s)}
        segs: dict[int, Segment] = {}
        present = set(view.seqs[e])
        run = []
        while s in present:
            run.append(s)
            s += 1
        for seq, seg in _read_segments(store, root, e, run):
            kinds[seq] = seg.kind
            segs[seq] = seg
            if seg.kind == "seal":
                break
        to_replay, _seal = fencing.replayable_prefix(kinds)
        for s in to_replay:
            if (e, s) > start:
                yield (e, s), segs[s]


def _read_segments(store: ObjectStore, root: str, epoch: int, seqs: list[int],
                   window: int = 64) -> Iterator[tuple[int, Segment]]:
    """The segments at `seqs`, in order, fetched `window` at a time by
    parallel GETs (replay after a takeover is bound by round trips)."""
    def get(seq: int) -> Segment:
        try:
            return read_segment(store, root, epoch, seq)
        except NotFound:
            raise _Retry(f"segment {epoch}-{seq} vanished while loading") from None
    with ThreadPoolExecutor(max_workers=16) as pool:
        for i in range(0, len(seqs), window):
            chunk = seqs[i:i + window]
            yield from zip(chunk, pool.map(get, chunk), strict=False)


def write_snapshot(store: ObjectStore, root: str, epoch: int, seq: int, state: MetaState,
                   records: list | None = None, next_ino: int | None = None) -> None:
    """Upload a snapshot of `state` as of segment (epoch, seq).

    The caller guarantees `state` equals the replay of every segment up to
    (epoch, seq) and nothing more (`records`, if given, are its records;
    `next_ino` may be higher than the state's: inode numbers are never
    reused, so the live daemon's counter is the safe one)."""
    recs = records if records is not None else list(state.snapshot_records())
    data = encode_snapshot(epoch, seq, max(state.next_ino, next_ino or 0), recs)
    failpoints.hit("before_snapshot_put")
    # already there: snapshots are deterministic for a position
    with contextlib.suppress(PreconditionFailed):
        store.put(keys.snapshot_key(root, epoch, seq), data, if_none_match=True)


def snapshot_refs(store: ObjectStore, root: str, position: tuple[int, int]) -> set[tuple[bytes, int]]:
    """(hash, epoch) of every data object the metadata snapshot at `position` references."""
    key = keys.snapshot_key(root, *position)
    _e, _s, _n, records = decode_snapshot(store.get(key), key)
    return own_refs_of_records(records)
