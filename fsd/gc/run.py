"""One garbage-collection pass over a volume in the store (blocking: run it
in a worker thread from trio). The rules are `fsd.volume.retention`'s; this module
only gathers what they need, in the order that makes them safe:

1. observe which epochs are sealed (their writers can never commit again);
2. only then rebuild the state (a fresh listing, so it holds every segment
   those sealed epochs ever committed) and fold the journal into a new
   snapshot, which becomes the base;
3. list the objects and delete what the plan says, segments and snapshots
   first, data objects last.

Fail closed: every listing and read happens before the first deletion, and
any error before that aborts the pass with nothing deleted. A pass stopped
half-way (kill -9, an error while deleting) leaves a volume that mounts:
each deletion on its own is safe.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from fsd import failpoints
from fsd.backup import history, snapshots
from fsd.format import keys
from fsd.format.framing import CorruptObject, frame, unframe
from fsd.meta.state import own_refs
from fsd.store.base import NotFound, ObjectInfo, ObjectStore
from fsd.volume import creating
from fsd.volume import objects as vol_mod
from fsd.volume.retention import GcPlan, Roots, Writers, plan, sealed_epochs

log = logging.getLogger("ferry.gc")

REPORT_MAGIC = b"FRYG"
DEFAULT_GRACE_S = 3600.0


@dataclass
class GcReport:
    volume: str
    root: str
    dry_run: bool
    started_ns: int
    finished_ns: int = 0
    host: str = field(default_factory=socket.gethostname)
    base: tuple[int, int] = (0, 0)
    compacted: int = 0                   # segments folded into the new base snapshot
    deleted: dict[str, dict[str, int]] = field(default_factory=dict)   # kind -> objects, bytes
    freed_bytes: int = 0
    live_objects: int = 0
    live_bytes: int = 0
    kept_young: int = 0
    kept_unsealed: int = 0
    kept_deferred: int = 0               # kept because a snapshot was being created
    error: str | None = None

    def encode(self) -> bytes:
        d = asdict(self)
        d["base"] = list(self.base)
        return frame(REPORT_MAGIC, d)


def read_report(store: ObjectStore, root: str) -> dict | None:
    """The last GC pass's report, as a plain dict (None if GC never ran)."""
    key = keys.gc_report_key(root)
    try:
        body = unframe(REPORT_MAGIC, store.get(key), key)
    except (NotFound, CorruptObject):
        return None
    return body if isinstance(body, dict) else None


def observe_writers(store: ObjectStore, root: str) -> tuple[Writers, vol_mod.JournalView]:
    """Step 1: which epochs are sealed, from one listing and a GET of the
    last key of each epoch at or above the horizon."""
    view = vol_mod.list_journal(store, root)
    kinds: dict[int, str] = {}
    for e, seqs in view.seqs.items():
        if e >= view.horizon and seqs:
            kinds[e] = vol_mod.read_segment(store, root, e, max(seqs)).kind
    latest = view.latest_epoch
    claim = vol_mod.read_claim(store, root, latest) if latest else None
    untagged = claim is not None and claim.format >= 2
    return Writers(sealed=sealed_epochs(kinds, view.epochs, view.horizon), untagged_collectable=untagged), view


def gather(store: ObjectStore, name: str, *, compact: bool, dry_run: bool,
           writers_hook: Callable[[Writers], Writers] | None = None
           ) -> tuple[vol_mod.VolumeRef, Roots, Writers, list[ObjectInfo], int,
                      tuple[tuple[str, str | None], ...]]:
    """Steps 1 and 2 and the listing of step 3: everything `plan` needs.
    Returns (ref, roots, writers, objects, segments compacted, pins to sweep)."""
    ref, sb = vol_mod.locate(store, name)
    root = ref.root
    writers, _ = observe_writers(store, root)
    if writers_hook is not None:
        writers = writers_hook(writers)
    loaded = vol_mod.load_state(store, root, sb)
    marked = own_refs(loaded.state)
    marked |= loaded.replayed_refs
    base = loaded.start
    compacted = 0
    if compact and loaded.replayed and not dry_run:
        vol_mod.write_snapshot(store, root, *loaded.last, loaded.state)
        base, compacted = loaded.last, loaded.replayed
        failpoints.hit("gc_after_snapshot")
    # Pins are read only now that the base is established (fsd.volume.retention.pin_roots).
    pins, pinned_refs = snapshots.gc_pins(store, root, time.time_ns())
    objects: list[ObjectInfo] = []
    for prefix in (keys.journal_prefix(root), keys.snapshots_prefix(root), keys.data_prefix(root)):
        objects.extend(store.list_info(prefix))
    hist_base, hist_refs = history.retained(
        store, root, [o for o in objects if keys.parse_journal_key(root, o.key)],
        [p for o in objects if (p := keys.parse_snapshot_key(root, o.key)) is not None],
        sb.history_s, time.time_ns())
    roots = Roots(base=base, marked=frozenset(marked | pinned_refs | hist_refs), pinned_snapshots=pins.pinned,
                  deferred=pins.deferred, history=hist_base)
    return ref, roots, writers, objects, compacted, pins.sweep


def collect(store: ObjectStore, name: str, *, dry_run: bool = False, grace_s: float = DEFAULT_GRACE_S,
            compact: bool = True, now_ns: int | None = None,
            progress: Callable[[int, int], None] | None = None,
            writers_hook: Callable[[Writers], Writers] | None = None) -> tuple[GcReport, GcPlan]:
    """One pass. Returns the report (also stored as `gc/last` unless
    dry_run) and the plan (what was, or would be, deleted)."""
    started = time.time_ns()
    ref, roots, writers, objects, compacted, sweep = gather(store, name, compact=compact, dry_run=dry_run,
                                                                writers_hook=writers_hook)
    p = plan(ref.root, objects, roots, writers, now_ns=now_ns if now_ns is not None else time.time_ns(),
             grace_ns=int(grace_s * 1e9))
    report = GcReport(volume=name, root=ref.root, dry_run=dry_run, started_ns=started, base=roots.base,
                      compacted=compacted, live_objects=p.live_objects, live_bytes=p.live_bytes,
                      kept_young=p.kept_young, kept_unsealed=p.kept_unsealed)
    report.kept_deferred = p.kept_deferred
    if not dry_run:
        try:
            _delete(store, p, progress)
            snapshots.sweep_pins(store, sweep)
            creating.sweep(store)
        except Exception as e:
            report.error = f"{type(e).__name__}: {e}"
            log.error("volume %s: GC stopped while deleting: %s (what was deleted was garbage; run it again)",
                      name, e)
    report.deleted = p.totals()
    report.freed_bytes = p.bytes
    report.finished_ns = time.time_ns()
    if not dry_run:
        try:
            store.put(keys.gc_report_key(ref.root), report.encode())
        except Exception as e:  # noqa: BLE001 - the report is informational
            log.warning("volume %s: cannot store the GC report: %s", name, e)
    if report.error:
        raise vol_mod.VolumeError(f"GC of {name!r} stopped: {report.error}")
    return report, p


def _delete(store: ObjectStore, p: GcPlan, progress: Callable[[int, int], None] | None) -> None:
    total = len(p.delete)
    done = 0
    for i in range(0, total, 500):
        chunk = p.delete[i:i + 500]
        store.delete_many([d.key for d in chunk])
        done += len(chunk)
        failpoints.hit("gc_between_deletions")
        if progress:
            progress(done, total)
