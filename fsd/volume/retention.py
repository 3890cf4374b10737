"""What garbage collection may delete: pure rules, no I/O (docs/format.md,
"Garbage collection", says why each one is safe).

The store adapter (`fsd.gc.run`) lists the volume's objects, picks the base
snapshot, reads the roots and asks `plan` which keys to delete. The roots
are listed in `Roots`: the base snapshot and the journal after it (the live
state), plus whatever else must survive — snapshots pinned by users,
clones or a history window slot in as `pinned_snapshots` and their
references as part of `marked`.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from fsd.format import keys
from fsd.format.pin import PENDING, READY, Pin
from fsd.store.base import ObjectInfo

DATA, SEGMENT, SNAPSHOT = "data", "segment", "snapshot"


@dataclass(frozen=True)
class Roots:
    """What the live volume and its retained history still need."""

    base: tuple[int, int]                       # position of the snapshot every mount may start from
    marked: frozenset[tuple[bytes, int]]        # (hash, epoch) of every referenced data object
    pinned_snapshots: frozenset[tuple[int, int]] = frozenset()
    # A pin is being created: what it will reference is not known yet, so
    # no data object and no snapshot may go in this pass (segments may).
    deferred: bool = False
    # The history window's start (`history_base`): journal keys and
    # snapshots from this position on stay, so that every commit inside the
    # window can be rebuilt; `marked` holds what they reference.
    history: tuple[int, int] | None = None


@dataclass(frozen=True)
class Writers:
    """Who may still write, as observed before the objects were listed.

    `sealed`: epochs whose seal was seen (or that lie below the base
    snapshot's epoch, which a begin proves sealed); their writers can never
    commit again, so an object of theirs that no root references is garbage
    for good. `untagged_collectable`: objects of format 1 (no epoch in the
    key) may go once the newest epoch was claimed by a ferry that never
    re-uses them (claim format >= 2). `own_epoch`/`protected`: the owner
    running GC in its own process may also collect its own epoch's objects,
    except the hashes it is using or uploading."""

    sealed: frozenset[int]
    untagged_collectable: bool = False
    own_epoch: int | None = None
    protected: frozenset[bytes] = frozenset()


@dataclass
class Deletion:
    kind: str
    key: str
    size: int


@dataclass
class GcPlan:
    delete: list[Deletion] = field(default_factory=list)
    kept_young: int = 0              # garbage candidates inside the grace period
    kept_unsealed: int = 0           # unreferenced objects of an epoch that may still commit
    kept_deferred: int = 0           # unreferenced, kept while a pin is being created
    live_objects: int = 0
    live_bytes: int = 0

    def totals(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for d in self.delete:
            t = out.setdefault(d.kind, {"objects": 0, "bytes": 0})
            t["objects"] += 1
            t["bytes"] += d.size
        return out

    @property
    def bytes(self) -> int:
        return sum(d.size for d in self.delete)


def last_keys(journal: Mapping[int, Iterable[int]]) -> set[tuple[int, int]]:
    """The last present journal key of each epoch. GC never deletes these:
    a writer of a fenced epoch only ever writes at its epoch's first gap,
    which is exactly where its seal is, so the seal must stay for that
    writer's conditional PUT to keep failing (docs/format.md)."""
    return {(e, max(seqs)) for e, seqs in journal.items() if seqs}


def plan(root: str, objects: Iterable[ObjectInfo], roots: Roots, writers: Writers, *,
         now_ns: int, grace_ns: int) -> GcPlan:
    """Which of `objects` (everything listed under the volume's root) to
    delete, in a safe order: journal segments and snapshots first (the base
    snapshot they were folded into exists already), data objects last."""
    objs = list(objects)
    journal: dict[int, list[int]] = {}
    for o in objs:
        js = keys.parse_journal_key(root, o.key)
        if js is not None:
            journal.setdefault(js[0], []).append(js[1])
    keep_last = last_keys(journal)
    keep_from = min(roots.base, roots.history) if roots.history is not None else roots.base
    out = GcPlan()
    segments: list[Deletion] = []
    snapshots: list[Deletion] = []
    data: list[Deletion] = []
    for o in objs:
        if (js := keys.parse_journal_key(root, o.key)) is not None:
            if js < keep_from and js not in keep_last:
                segments.append(Deletion(SEGMENT, o.key, o.size))
            continue
        if (sp := keys.parse_snapshot_key(root, o.key)) is not None:
            if sp < keep_from and sp not in roots.pinned_snapshots and not roots.deferred:
                snapshots.append(Deletion(SNAPSHOT, o.key, o.size))
            continue
        if (dk := keys.parse_data_key(root, o.key)) is not None:
            if dk in roots.marked:
                out.live_objects += 1
                out.live_bytes += o.size
                continue
            if roots.deferred:
                out.kept_deferred += 1
                continue
            if not _writer_gone(dk, writers):
                out.kept_unsealed += 1
                continue
            if now_ns - o.mtime_ns < grace_ns:
                out.kept_young += 1
                continue
            data.append(Deletion(DATA, o.key, o.size))
    out.delete = sorted(segments, key=lambda d: d.key) + sorted(snapshots, key=lambda d: d.key) + data
    return out


def _writer_gone(dk: tuple[bytes, int], w: Writers) -> bool:
    """May an unreferenced object still become referenced? Only by a commit
    of the epoch that uploaded it (writers upload under their own epoch and
    never re-use another epoch's object), so not once that epoch is sealed."""
    h, epoch = dk
    if epoch == 0:
        return w.untagged_collectable
    if epoch in w.sealed:
        return True
    return w.own_epoch == epoch and h not in w.protected


@dataclass(frozen=True)
class PinRoots:
    pinned: frozenset[tuple[int, int]]     # snapshots that ready pins keep
    deferred: bool                          # a pin is being created
    abandoned: tuple[str, ...]              # keys of pending pins whose creator died
    # (pin key, holder root or None) to delete after the pass: abandoned
    # pins, and ready clone pins whose clone never became a volume; a
    # holder's root (the clone's half-made objects) goes before its pin.
    sweep: tuple[tuple[str, str | None], ...] = ()


def pin_roots(pins: Mapping[str, Pin], now_ns: int) -> PinRoots:
    """What the volume's pins (`fsd.format.pin`) ask of a GC pass, read after
    its base was established: a pin created later starts from a position at
    or after the base, so what it references is marked already."""
    pinned = frozenset(p.position for p in pins.values() if p.state == READY)
    live_pending = any(p.state == PENDING and not p.abandoned(now_ns) for p in pins.values())
    abandoned = tuple(sorted(k for k, p in pins.items() if p.abandoned(now_ns)))
    return PinRoots(pinned=pinned, deferred=live_pending, abandoned=abandoned)


def history_base(journal_mtimes: Mapping[tuple[int, int], int], snapshots: Collection[tuple[int, int]],
                 window_start_ns: int) -> tuple[int, int]:
    """Where the history window's retained journal starts: the newest
    snapshot at or before the last commit older than the window (the state
    as of the window's first moment is that commit's, rebuilt from there).
    (0, 0): keep everything (no commit is older than the window, or no
    snapshot precedes the one that is)."""
    older = [p for p, mt in journal_mtimes.items() if mt < window_start_ns]
    if not older:
        return (0, 0)
    p0 = max(older)
    return max((s for s in snapshots if s <= p0), default=(0, 0))


def sealed_epochs(journal_last_kinds: Mapping[int, str], claimed: Collection[int], horizon: int) -> frozenset[int]:
    """Epochs that can never commit again: those below the horizon (the base
    snapshot's epoch began, which proves them sealed) and those whose last
    journal key is a seal."""
    out = {e for e in claimed if e < horizon}
    out |= {e for e, kind in journal_last_kinds.items() if kind == "seal"}
    return frozenset(out)
