"""A volume's recent past: which committed states the store can rebuild,
and the state as of a moment (point-in-time restore; docs/format.md,
"History window").

Every commit is an immutable journal segment and every block an immutable
data object, so the state as of any commit can be rebuilt from a metadata
snapshot at or before it plus the segments up to it, for as long as GC
keeps them. GC keeps them for the volume's history window (superblock
option `history`, `fsd.volume.retention.history_base`); what is older may be gone.

A commit's time is the `created_ns` its writer stamped in the segment (the
clock of the host the application ran on, which is the clock the user
reasons with), not the store's LastModified.

Blocking (store I/O): run it in a worker thread from trio.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from fsd.format import keys
from fsd.format.framing import CorruptObject
from fsd.format.snapshot import decode_snapshot
from fsd.format.superblock import Superblock
from fsd.meta.state import MetaState, own_refs_of_records
from fsd.store.base import NotFound, ObjectInfo, ObjectStore
from fsd.volume import fencing
from fsd.volume import objects as vol_mod
from fsd.volume.objects import snapshot_refs
from fsd.volume.retention import history_base

_REL_RE = re.compile(r"-(\d+(?:\.\d+)?)(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class HistoryError(vol_mod.VolumeError):
    """The moment asked for cannot be restored; the message says what can."""


@dataclass(frozen=True)
class Commit:
    position: tuple[int, int]
    created_ns: int


def parse_moment(text: str, now_ns: int) -> int:
    """Nanoseconds since the epoch of `2026-11-29T10:15:00Z` (ISO 8601 with a
    zone; fractions allowed) or of `-15m` (s, m, h, d before `now_ns`).
    ValueError says which forms are understood."""
    m = _REL_RE.fullmatch(text)
    if m:
        return now_ns - int(float(m.group(1)) * _UNITS[m.group(2)] * 1e9)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        dt = None
    if dt is None or dt.tzinfo is None:
        raise ValueError(f"{text!r} is not a moment: use UTC like 2026-11-29T10:15:00Z (or with an offset, "
                         f"+01:00), or a time ago like -15m, -2h, -1d")
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000


def format_ns(ns: int, *, precise: bool = False) -> str:
    """UTC ISO 8601 with a Z: milliseconds to show, microseconds (`precise`)
    to hand a moment on without moving it before a commit."""
    dt = datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC)
    return dt.isoformat(timespec="microseconds" if precise else "milliseconds").replace("+00:00", "Z")


def _start(store: ObjectStore, root: str, view: vol_mod.JournalView) -> tuple[int, int]:
    """The oldest position from which the kept journal replays unbroken: the
    oldest usable snapshot, or the journal's beginning if GC never compacted."""
    latest = view.latest_epoch
    if fencing.chain_breaks((0, 0), view.seqs, view.epochs, latest) is None:
        return (0, 0)
    for pos in view.snapshots:
        if fencing.chain_breaks(pos, view.seqs, view.epochs, latest) is None and pos[1] in view.seqs.get(pos[0], []):
            return pos
    raise HistoryError(f"volume {root}: no snapshot from which the kept journal replays; run 'ferry fs fsck'")


def commits(store: ObjectStore, root: str) -> list[Commit]:
    """Every commit whose state can be rebuilt, oldest first. The first one
    is the oldest snapshot's position (or the volume's first segment)."""
    view = vol_mod.list_journal(store, root)
    start = _start(store, root, view)
    out: list[Commit] = []
    if start != (0, 0):
        out.append(Commit(start, vol_mod.read_segment(store, root, *start).created_ns))
    out.extend(Commit(pos, seg.created_ns) for pos, seg in vol_mod.replayable_after(store, root, view, start))
    return out


def state_at(store: ObjectStore, root: str, sb: Superblock, at_ns: int
             ) -> tuple[tuple[int, int], MetaState, int]:
    """(position, state, next_ino) as of the last commit at or before `at_ns`."""
    view = vol_mod.list_journal(store, root)
    start = _start(store, root, view)
    first_ns = vol_mod.read_segment(store, root, *start).created_ns if start != (0, 0) else None
    if first_ns is not None and at_ns < first_ns:
        raise HistoryError(f"{format_ns(at_ns)} is before the oldest moment kept ({format_ns(first_ns)}); "
                           f"the volume's history window (-o history=) says how far back GC keeps it")
    # Pick the newest snapshot at or before the target on a second pass,
    # once the target position is known: reading only what is needed.
    target = start
    for pos, seg in vol_mod.replayable_after(store, root, view, start):
        if seg.created_ns > at_ns:
            if target == (0, 0):
                raise HistoryError(f"{format_ns(at_ns)} is before the oldest moment kept "
                                   f"({format_ns(seg.created_ns)}, the volume's creation)")
            break
        target = pos
    base = max((p for p in view.snapshots if start <= p <= target
                and fencing.chain_breaks(p, view.seqs, view.epochs, view.latest_epoch) is None), default=start)
    state, next_ino = _snapshot_state(store, root, sb, base)
    for _pos, seg in _until(vol_mod.replayable_after(store, root, view, base), target):
        state.apply_all(seg.records)
    return target, state, max(state.next_ino, next_ino)


def _until(it: Iterator, target: tuple[int, int]) -> Iterator:
    for pos, seg in it:
        if pos > target:
            return
        yield pos, seg


def _snapshot_state(store: ObjectStore, root: str, sb: Superblock, pos: tuple[int, int]) -> tuple[MetaState, int]:
    if pos == (0, 0):
        return MetaState(sb.block_size), 0
    key = keys.snapshot_key(root, *pos)
    try:
        _e, _s, next_ino, records = decode_snapshot(store.get(key), key)
    except (NotFound, CorruptObject) as e:
        raise HistoryError(f"the snapshot at {pos} is unreadable ({e}); try a later moment") from None
    return MetaState.from_records(sb.block_size, records), next_ino


# Clocks differ: GC measures the window with the store's LastModified,
# restores with the writers' created_ns. Keep a margin on GC's side.
CLOCK_SLACK_NS = 30 * 10**9


def retained(store: ObjectStore, root: str, journal: Iterable[ObjectInfo], snapshots_at: Collection[tuple[int, int]],
             window_s: float, now_ns: int, cache: dict[tuple[int, int], frozenset] | None = None
             ) -> tuple[tuple[int, int] | None, set[tuple[bytes, int]]]:
    """What a GC pass must keep for the history window: (the position from
    which journal keys and snapshots stay, the data objects referenced by
    the snapshot there and by every later segment). (None, {}) without a
    window. `cache` (position -> refs) spares re-reading segments on the
    next pass: segments never change. Raises on any unreadable object: GC
    must not guess."""
    if window_s <= 0:
        return None, set()
    mtimes = {p: o.mtime_ns for o in journal if (p := keys.parse_journal_key(root, o.key)) is not None}
    hb = history_base(mtimes, snapshots_at, now_ns - int(window_s * 1e9) - CLOCK_SLACK_NS)
    refs: set[tuple[bytes, int]] = set()
    if hb != (0, 0):
        refs |= snapshot_refs(store, root, hb)
    todo = sorted(p for p in mtimes if p > hb and (cache is None or p not in cache))
    got: dict[tuple[int, int], frozenset] = {}

    def read(p: tuple[int, int]) -> tuple[tuple[int, int], frozenset]:
        return p, frozenset(own_refs_of_records(vol_mod.read_segment(store, root, *p).records))

    with ThreadPoolExecutor(max_workers=16) as pool:
        got.update(pool.map(read, todo))
    if cache is not None:
        for p in [p for p in cache if p <= hb]:
            del cache[p]
        cache.update(got)
        got = {p: r for p, r in cache.items() if p > hb}
    for r in got.values():
        refs |= r
    return hb, refs
