"""Removing a volume from the store: fence it, then delete every object.

Two steps, in this order (docs/format.md, "Removal"):

1. `begin_removal` claims the next epoch with purpose "remove" and seals
   the epoch before it. From then on a stale or partitioned owner can
   commit nothing (its next segment meets the seal) and no mount can start
   (`fsd.volume.fencing.decide_mount` refuses after a removal claim). This is one
   conditional PUT and a seal: it is done before the caller is told the
   volume is gone.
2. `delete_volume` deletes the objects in `deletion_phases` order. It can
   be stopped at any point (kill -9) and run again: it lists what is left
   and goes on. The removal claim goes last but one, the incarnation record
   last, so every intermediate state still reads as "being removed", never
   as a volume that mounts.

`deletion_phases` is pure; the rest is the store adapter.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fsd import failpoints
from fsd.backup import clones, snapshots
from fsd.format import keys
from fsd.format.framing import CorruptObject
from fsd.store.base import NotFound, ObjectStore
from fsd.volume import objects as vol_mod

log = logging.getLogger("ferry.removal")

Progress = Callable[[int, int, int], None]     # (objects deleted so far, objects found, bytes freed)


def root_prefixes(root: str) -> list[str]:
    """The prefixes holding a volume's objects under `root`. Listed one by
    one, never as `root/`: a format-1 root is the bare name, under which the
    name's later incarnations live too."""
    return [keys.superblock_key(root), keys.epochs_prefix(root), keys.journal_prefix(root),
            keys.snapshots_prefix(root), keys.data_prefix(root), keys.gc_prefix(root)]


def deletion_phases(root: str, found: Iterable[str]) -> list[list[str]]:
    """Group a removed volume's keys into phases deleted one after another.

    1. data objects, snapshots, GC reports and every journal key but the
       last of its epoch;
    2. the last journal key of each epoch (a seal: while it exists, a stale
       writer of that epoch still meets it and learns it is fenced);
    3. every epoch claim but the newest (the removal claim), and the
       superblock;
    4. the removal claim: until now the volume reads as "being removed".
    """
    journal: dict[int, list[int]] = {}
    epochs: list[int] = []
    p1: list[str] = []
    p3: list[str] = []
    for k in found:
        if (js := keys.parse_journal_key(root, k)) is not None:
            journal.setdefault(js[0], []).append(js[1])
        elif (e := keys.parse_epoch_key(root, k)) is not None:
            epochs.append(e)
        elif k == keys.superblock_key(root):
            p3.append(k)
        else:
            p1.append(k)
    p2: list[str] = []
    for e, seqs in journal.items():
        seqs.sort()
        p1.extend(keys.journal_key(root, e, s) for s in seqs[:-1])
        p2.append(keys.journal_key(root, e, seqs[-1]))
    epochs.sort()
    p3.extend(keys.epoch_key(root, e) for e in epochs[:-1])
    p4 = [keys.epoch_key(root, e) for e in epochs[-1:]]
    return [p for p in (sorted(p1), sorted(p2), p3, p4) if p]


@dataclass
class RemovalResult:
    root: str
    deleted: int
    bytes: int
    kept: list[str]          # fencing seals that outlive the removal (see fencing_tombstones)
    # Clones made from this volume (their roots): what they share is kept
    # until the last of them is removed, which finishes this removal.
    held_by: list[str] = field(default_factory=list)
    kept_objects: int = 0


def begin_removal(store: ObjectStore, name: str, *, force: bool = False) -> vol_mod.VolumeRef:
    """Fence the volume and mark it removed (step 1). Idempotent: a volume
    already being removed is returned as it is. Refuses a volume whose
    newest epoch is not sealed (mounted somewhere, or its owner crashed)
    unless `force`: removing it seals that epoch, as a takeover would."""
    keys.validate_volume_name(name)
    ref = vol_mod.find_volume(store, name)
    if ref is None:
        raise vol_mod.VolumeError(f"volume {name!r} does not exist in {store.url}")
    if vol_mod.is_removed(store, ref):
        return ref
    try:
        vol_mod.claim_epoch(store, ref.root, cache_tokens=(), takeover=force, purpose="remove")
    except vol_mod.VolumeError as e:
        if "was not released cleanly" in str(e):
            raise vol_mod.VolumeError(
                f"volume {name!r} is in use (its newest epoch is held and not released): unmount it "
                f"first. If its host is gone for good, pass --force: the owner is fenced and the "
                f"volume removed.") from None
        raise
    failpoints.hit("removal_after_claim")
    log.info("volume %s: marked removed (root %s); deleting its objects", name, ref.root)
    return ref


def list_remaining(store: ObjectStore, ref: vol_mod.VolumeRef) -> list[tuple[str, int]]:
    """(key, size) of every object left under the removed volume's root."""
    out: list[tuple[str, int]] = []
    for prefix in root_prefixes(ref.root):
        out.extend((o.key, o.size) for o in store.list_info(prefix))
    if ref.root != ref.name:
        seen = {k for k, _ in out}
        out.extend((o.key, o.size) for o in store.list_info(ref.root + "/") if o.key not in seen)
    return out


def delete_volume(store: ObjectStore, ref: vol_mod.VolumeRef, *, progress: Progress | None = None
                  ) -> RemovalResult:
    """Delete everything of a volume marked removed (step 2), resumably.

    A volume that clones were made from keeps what they share (`held`)
    until the last clone is removed; the removal of a clone lets go of its
    origin first and finishes the origin's removal if it was waiting for
    that clone (docs/format.md, "Clones")."""
    if not vol_mod.is_removed(store, ref):
        raise vol_mod.VolumeError(f"volume {ref.name!r} is not marked removed; refusing to delete it")
    pins = snapshots.read_pins(store, ref.root)
    stale = snapshots.stale_pins(store, pins, time.time_ns())
    snapshots.sweep_pins(store, stale)       # clones that were never completed hold nothing
    gone = {k for k, _ in stale}
    clone_pins = {k: p for k, p in pins.items() if p.kind == "clone" and k not in gone}
    if clone_pins:
        return _delete_held(store, ref, clone_pins, progress)
    _let_go_of_origin(store, ref)
    found = list_remaining(store, ref)
    keep = fencing_tombstones(store, ref.root, [k for k, _ in found])
    sizes = {k: n for k, n in found if k not in keep}
    total = len(sizes)
    done = 0
    nbytes = 0
    if progress:
        progress(0, total, 0)
    for phase in deletion_phases(ref.root, sizes):
        for i in range(0, len(phase), 1000):
            chunk = phase[i:i + 1000]
            store.delete_many(chunk)
            done += len(chunk)
            nbytes += sum(sizes[k] for k in chunk)
            failpoints.hit("removal_between_deletions")
            if progress:
                progress(done, total, nbytes)
    # Verify: list again, and delete what a listing missed or what arrived
    # meanwhile (seen once in a suite run on moto: two concurrent removal
    # jobs, and objects of an earlier epoch listed only afterwards).
    for _ in range(3):
        late = {k: n for k, n in list_remaining(store, ref) if k not in keep}
        if not late:
            break
        log.warning("volume %s: %d object(s) under %s were still there after the deletion; deleting them",
                    ref.name, len(late), ref.root)
        for phase in deletion_phases(ref.root, late):
            store.delete_many(phase)
            done += len(phase)
            nbytes += sum(late[k] for k in phase)
    if ref.incarnation:
        store.delete(keys.incarnation_key(ref.name, ref.incarnation))
    log.info("volume %s: removed %d objects (%d bytes) of %s", ref.name, done, nbytes, ref.root)
    if keep:
        log.warning("volume %s: kept %d seal(s) of epochs whose owner never released the volume (%s): "
                    "while such an owner may still run somewhere, its seal is what stops it from "
                    "committing; they are tiny and harmless", ref.name, len(keep), ", ".join(sorted(keep)))
    return RemovalResult(ref.root, done, nbytes, sorted(keep))


def _let_go_of_origin(store: ObjectStore, ref: vol_mod.VolumeRef) -> None:
    """A removed clone drops its pin in its origin, before anything of its
    own is deleted (so a resumed removal, which may find the superblock
    gone, has nothing left to drop), and finishes the origin's removal if
    the origin is removed and this was its last clone."""
    try:
        sb = vol_mod.read_superblock(store, ref)
    except vol_mod.VolumeError:
        return                  # superblock gone: this step was done by an earlier run
    origin = clones.drop_pin(store, sb)
    if origin is not None and vol_mod.is_removed(store, origin):
        res = delete_volume(store, origin)
        log.info("volume %s: its origin %s (removed earlier) %s", ref.name, origin.name,
                 f"waits for {len(res.held_by)} other clone(s)" if res.held_by else "is now deleted too")


def held_keys(root: str, found: Iterable[str], pinned: set[tuple[int, int]],
              refs: set[tuple[bytes, int]]) -> set[str]:
    """Of a removed volume's keys, those its clones still need: the clone
    pins and the snapshots they pin, the data objects those reference, and
    what keeps the volume readable as removed (superblock, claims, the last
    journal key of each epoch, which may be a stale owner's fencing seal)."""
    keep: set[str] = set()
    last: dict[int, int] = {}
    for k in found:
        if (js := keys.parse_journal_key(root, k)) is not None:
            last[js[0]] = max(last.get(js[0], 0), js[1])
        elif (sp := keys.parse_snapshot_key(root, k)) is not None:
            if sp in pinned:
                keep.add(k)
        elif (dk := keys.parse_data_key(root, k)) is not None:
            if dk in refs:
                keep.add(k)
        elif (pk := keys.parse_pin_key(root, k)) is not None:
            if pk[0] == "clone":
                keep.add(k)
        elif keys.parse_epoch_key(root, k) is not None or k == keys.superblock_key(root):
            keep.add(k)
    keep |= {keys.journal_key(root, e, s) for e, s in last.items()}
    return keep


def _delete_held(store: ObjectStore, ref: vol_mod.VolumeRef, clone_pins: dict, progress: Progress | None
                 ) -> RemovalResult:
    if any(p.state != "ready" for p in clone_pins.values()):
        raise vol_mod.VolumeError(f"volume {ref.name!r}: a clone of it is being created right now; the "
                                  "removal goes on once that clone is made or gives up (it checks for "
                                  "the removal and gives up)")
    pinned = {p.position for p in clone_pins.values()}
    refs: set[tuple[bytes, int]] = set()
    for pos in pinned:
        refs |= snapshots.snapshot_refs(store, ref.root, pos)
    found = list_remaining(store, ref)
    keep = held_keys(ref.root, [k for k, _ in found], pinned, refs)
    sizes = {k: n for k, n in found if k not in keep}
    total, done, nbytes = len(sizes), 0, 0
    if progress:
        progress(0, total, 0)
    order = sorted(sizes, key=lambda k: keys.parse_data_key(ref.root, k) is not None)   # data last
    for i in range(0, len(order), 1000):
        chunk = order[i:i + 1000]
        store.delete_many(chunk)
        done += len(chunk)
        nbytes += sum(sizes[k] for k in chunk)
        if progress:
            progress(done, total, nbytes)
    holders = sorted(p.holder or p.name for p in clone_pins.values())
    log.info("volume %s: removed %d objects (%d bytes) of %s; kept %d that %d clone(s) share (%s): they go "
             "with the last of those clones", ref.name, done, nbytes, ref.root, len(keep), len(holders),
             ", ".join(holders))
    return RemovalResult(ref.root, done, nbytes, [], held_by=holders, kept_objects=len(keep))


def fencing_tombstones(store: ObjectStore, root: str, found: Iterable[str]) -> set[str]:
    """Seals that must outlive the removal: those of epochs that were sealed
    by someone other than their owner (a takeover, a forced removal). That
    owner may be alive (partitioned, frozen) and would commit its next
    segment exactly at its seal's key if the key were gone. An epoch sealed
    with reason "release" was sealed by its own owner, who writes no more."""
    last: dict[int, int] = {}
    for k in found:
        if (js := keys.parse_journal_key(root, k)) is not None:
            last[js[0]] = max(last.get(js[0], 0), js[1])
    keep: set[str] = set()
    for e, s in last.items():
        try:
            seg = vol_mod.read_segment(store, root, e, s)
        except CorruptObject:
            continue
        except NotFound:
            continue
        if seg.kind == "seal" and seg.reason != "release":
            keep.add(keys.journal_key(root, e, s))
    return keep


def pending_removals(store: ObjectStore, name: str) -> list[vol_mod.VolumeRef]:
    """Every incarnation of `name` (and a format-1 volume) that is marked
    removed but not fully deleted: what `ferry fs rm` finishes."""
    refs: list[vol_mod.VolumeRef] = []
    for n in vol_mod.list_incarnations(store, name):
        inc = vol_mod.read_incarnation(store, name, n)
        if inc is not None:
            refs.append(vol_mod.VolumeRef(name, keys.volume_root(name, inc.uuid), n))
    if store.head(keys.superblock_key(name)) is not None or any(
            True for _ in store.list(keys.epochs_prefix(name))):
        refs.append(vol_mod.VolumeRef(name, name, 0))
    return [r for r in refs if vol_mod.is_removed(store, r)]
