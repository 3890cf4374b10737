"""What a store holds, as the control service records it: read-only.

The control service (control/leases.py: `Volume`, `Removal`) keeps the
volumes of a cluster, their options, labels, snapshots, clone links and
removal jobs in its own state. Should that state be lost, every volume's
objects are still in the store, and `read_inventory` reads back from them
what the control service needs to rebuild its records:

- the live volumes (a name's highest incarnation that is not marked
  removed, or a format-1 volume), with the creation options a user would
  give `ferry fs mkfs` / `docker volume create -o` to make that volume
  (rebuilt from its superblock: docs/format.md, "Superblock"), its
  creation time (the incarnation record's, the commit point of a create),
  its user snapshots (ready `pins/snap/NAME` pins: name, [epoch, seq],
  creation time) and, for a clone, its origin and an equivalent `from=`;
- the removals in progress: roots marked removed (`fsd.lifecycle.removal`) whose
  incarnation record (the last thing a removal deletes) is still there,
  exactly what `ferry fs rm` would go on deleting;
- `problems`: a note for everything that could not be read (a corrupt
  superblock, claim, pin or incarnation record, a journal that does not
  load). One bad volume never hides the others.

What the store does not hold, and so cannot come back from it: labels,
mount options given at `docker volume create` (durability, cache_size,
gc..., and `size` of a files volume), the user's exact spelling of the
options (defaults are left out: see `_volume_options`) and the control
service's own clocks (its `created` times were taken when it recorded a
volume or snapshot; these are the store's writers' clocks).

Only GET, HEAD and LIST are used: nothing here writes, so it is safe
against a live cluster. Synchronous (store I/O): from trio, call it in a
worker thread. A store that fails (`StoreError` other than a key deleted
while it was being read) makes `read_inventory` raise rather than return a
partial inventory that would look like missing volumes.
"""
from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from fsd.format import control_record, keys
from fsd.format.framing import CorruptObject
from fsd.format.incarnation import Incarnation
from fsd.format.pin import READY, Pin
from fsd.format.superblock import DEFAULT_BLOCK_SIZE, Superblock
from fsd.options import parse_duration
from fsd.store.base import NotFound, ObjectInfo, ObjectStore, StoreError
from fsd.volume import objects as vol_mod

__all__ = [
    "Inventory",
    "InventoryError",
    "RemovalInfo",
    "SnapshotInfo",
    "VolumeInfo",
    "list_names",
    "read_inventory",
    "read_volume",
]

log = logging.getLogger("ferry.inventory")

IMAGE_NAME = b"image"          # a block volume's image file at the root (fsd/block/stack.py)
DEFAULT_HISTORY_S = parse_duration("1h")    # fsd.format.superblock.DEFAULT_HISTORY
_WORKERS = 8                   # names read in parallel (an S3 store answers each GET in a round trip)
_PAST_KEYS = "~"               # sorts after every character of a key ferry writes


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    position: list[int]      # [epoch, seq]: the pin's position, what the control service records
    created: float           # wall-clock seconds: the pin's created_ns (when its creation started)


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    root: str                # the store root of the current incarnation ("NAME/UUID"; "NAME" for format 1)
    options: dict[str, str]  # creation options as a user gives them (defaults left out), see _volume_options
    created: float           # wall-clock seconds: the incarnation record's created_ns (format 1: the superblock's)
    snapshots: tuple[SnapshotInfo, ...]    # ready user snapshots, by name
    origin: str | None       # a clone's origin volume name (superblock origins[0]), else None


@dataclass(frozen=True)
class RemovalInfo:
    name: str
    root: str                # marked removed, incarnation record still there: a deletion in progress
    # Roots of the clones that keep part of this (removed) origin: its
    # deletion ends when the last of them is removed (fsd/lifecycle/removal.py), so a
    # removal job for it finds nothing to do until then. Empty for most.
    held_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inventory:
    volumes: tuple[VolumeInfo, ...]       # sorted by name; live volumes only
    removals: tuple[RemovalInfo, ...]     # sorted by root
    problems: tuple[str, ...]             # human-readable notes on what could not be read


class InventoryError(Exception):
    """`read_volume`: the volume exists but cannot be read (the message says what)."""


# ------------------------------------------------------------------ names


def list_names(store: ObjectStore) -> list[str]:
    """Every volume name with objects in the store, sorted: the first
    component of its keys. One LIST per name (each starts after the
    previous name's keys), however many objects a volume has; keys of
    other shapes (`_probe/...`, stray objects) yield names that hold no
    volume, which the callers skip. (Keys list "v-x/" < "v/" < "v0/":
    the names are sorted at the end.)"""
    names: list[str] = []
    after = last = ""
    while True:
        key = _first_key(store, after)
        if key is None:
            return sorted(names)
        name, slash, _rest = key.partition("/")
        if not slash or name == last:
            after = key                 # a top-level object, or a key past the sentinel: step over it
            continue
        last = name
        after = name + "/" + _PAST_KEYS
        try:
            keys.validate_volume_name(name)
        except ValueError:
            continue
        names.append(name)


def _first_key(store: ObjectStore, after: str) -> str | None:
    it = store.list("", after)
    try:
        return next(iter(it), None)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------ public


class _Listed:
    """The store as one LIST of every key saw it, for the inventory's own
    listings; objects are still read from the store itself.

    Why: the inventory reads a few keys of each of thousands of volumes, and
    the functions it reuses (fsd.volume.objects) LIST a prefix for each: thousands of
    LISTs, which cost S3 a round trip each and moto a scan of the whole
    bucket each (1,000 volumes took 270 s against moto before, one listing
    makes it a fraction of that). A point-in-time listing is what an
    inventory is anyway; an object deleted since is a NotFound, handled as
    "changed while it was read"."""

    def __init__(self, store: ObjectStore, infos: list[ObjectInfo]):
        self._store = store
        self.url = store.url
        self._infos = sorted(infos, key=lambda o: o.key)
        self._keys = [o.key for o in self._infos]
        self._sizes = {o.key: o.size for o in self._infos}

    def _range(self, prefix: str, start_after: str) -> Iterator[int]:
        i = bisect.bisect_right(self._keys, start_after) if start_after >= prefix else \
            bisect.bisect_left(self._keys, prefix)
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            yield i
            i += 1

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        return (self._keys[i] for i in self._range(prefix, start_after))

    def list_info(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        return (self._infos[i] for i in self._range(prefix, start_after))

    def head(self, key: str) -> int | None:
        return self._sizes.get(key)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        return self._store.get(key, start, end)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        raise AssertionError("the inventory never writes")

    def delete(self, key: str) -> None:
        raise AssertionError("the inventory never writes")

    def delete_many(self, keys: Sequence[str]) -> None:
        raise AssertionError("the inventory never writes")

    def close(self) -> None:
        pass


def _metadata_listing(store: ObjectStore) -> list[ObjectInfo]:
    """Every key of the store except data objects, in one pass: a volume's data
    (`ROOT/data/`, one object per block, millions in a big store) is stepped
    over with one new LIST starting past it, so memory and requests grow with
    the number of volumes and commits, not with the bytes stored."""
    out: list[ObjectInfo] = []
    after = ""
    while True:
        it = store.list_info("", after)
        skip_to = None
        try:
            for o in it:
                parts = o.key.split("/", 3)
                at = 2 if len(parts) > 3 and parts[2] == "data" else 1 if len(parts) > 2 and parts[1] == "data" \
                    else None
                if at is not None:
                    skip_to = "/".join(parts[:at + 1]) + "/" + _PAST_KEYS
                    break
                out.append(o)
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()
        if skip_to is None:
            return out
        after = skip_to


def read_inventory(store: ObjectStore, progress: Callable[[int, int], None] | None = None) -> Inventory:
    """Every live volume, every removal in progress, and notes on what could
    not be read. `progress(done, total)` is called with the number of names
    read so far (from the calling thread). One LIST of the whole store (see
    `_Listed`), then a few GETs per volume, 8 volumes at a time."""
    store = _Listed(store, _metadata_listing(store))
    names = list_names(store)
    total = len(names)
    if progress:
        progress(0, total)
    results: dict[str, _NameResult] = {}
    pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="inventory")
    try:
        futures = {pool.submit(_read_name, store, name): name for name in names}
        for fut in as_completed(futures):
            results[futures[fut]] = fut.result()
            if progress:
                progress(len(results), total)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    volumes: list[VolumeInfo] = []
    removals: list[RemovalInfo] = []
    problems: list[str] = []
    for name in names:
        r = results[name]
        if r.volume is not None:
            volumes.append(r.volume)
        removals.extend(r.removals)
        problems.extend(r.notes)
    live_roots = {v.name: v.root for v in volumes}
    removed_roots = {r.root for r in removals}
    for v in volumes:
        origin_root = results[v.name].origin_root
        if v.origin is None or origin_root is None:
            continue
        if origin_root in removed_roots:
            problems.append(f"volume {v.name!r}: its origin {v.origin!r} (root {origin_root}) is removed; the "
                            f"clone keeps what it shares (from={v.options.get('from')} is for the record only)")
        elif v.origin in live_roots and live_roots[v.origin] != origin_root:
            problems.append(f"volume {v.name!r}: its origin is an earlier volume named {v.origin!r} (root "
                            f"{origin_root}), not the current one ({live_roots[v.origin]})")
    return Inventory(volumes=tuple(sorted(volumes, key=lambda v: v.name)),
                     removals=tuple(sorted(removals, key=lambda r: r.root)),
                     problems=tuple(problems))


def read_volume(store: ObjectStore, name: str) -> VolumeInfo | None:
    """The live volume `name`, None if the name has none (never created,
    removed or being removed). ValueError for an invalid name;
    InventoryError if the volume exists but cannot be read; StoreError if
    the store fails."""
    keys.validate_volume_name(name)
    r = _read_name(store, name, removals=False)
    if r.volume is None and r.unreadable:
        raise InventoryError("; ".join(r.notes))
    return r.volume


# ------------------------------------------------------------------ one name


@dataclass
class _NameResult:
    volume: VolumeInfo | None
    removals: list[RemovalInfo]
    notes: list[str]
    unreadable: bool = False        # the name's current volume exists but could not be read
    origin_root: str | None = None  # a clone's: where its origin's objects are


def _read_name(store: ObjectStore, name: str, *, removals: bool = True) -> _NameResult:
    """The live volume of `name` and (with `removals`) its removals in progress."""
    out = _NameResult(None, [], [])
    try:
        incs, out.unreadable = _incarnations(store, name, out.notes)
        refs = [vol_mod.VolumeRef(name, keys.volume_root(name, inc.uuid), inc.n) for inc in incs]
        created = {ref.root: inc.created_ns for ref, inc in zip(refs, incs, strict=False)}
        # The name's current volume (`fsd.volume.objects.find_volume`): its highest
        # incarnation, or a format-1 volume (root: the bare name) if it has none.
        f1 = vol_mod.VolumeRef(name, name, 0)
        f1_sb = store.head(keys.superblock_key(name)) is not None
        current = None if out.unreadable else refs[-1] if refs else f1 if f1_sb else None
        if removals:
            # What `fsd.lifecycle.removal.pending_removals` finishes: every incarnation
            # whose record is still there, and a format-1 root with a
            # superblock or claims left, if marked removed.
            candidates = list(refs)
            if f1_sb or _any(store, keys.epochs_prefix(name)):
                candidates.append(f1)
        else:
            candidates = [current] if current is not None else []
        for ref in candidates:
            try:
                removed = vol_mod.is_removed(store, ref)
            except CorruptObject as e:
                out.notes.append(f"volume {name!r} (root {ref.root}): cannot tell whether it is removed: {e}")
                out.unreadable = out.unreadable or ref == current
                continue
            if removed:
                if removals:
                    out.removals.append(RemovalInfo(name, ref.root, _held_by(store, ref, out.notes)))
            elif ref == current:
                try:
                    out.volume, out.origin_root = _read_live(store, ref, created.get(ref.root), out.notes)
                except (CorruptObject, vol_mod.VolumeError) as e:
                    out.notes.append(f"volume {name!r} (root {ref.root}) is unreadable and was left out: {e}")
                    out.unreadable = True
                except NotFound as e:
                    out.notes.append(f"volume {name!r} (root {ref.root}) changed while it was read (removed "
                                     f"meanwhile?) and was left out: {e}")
                    out.unreadable = True
            elif ref != f1:
                out.notes.append(f"volume {name!r}: incarnation {ref.incarnation} (root {ref.root}) is neither the "
                                 f"name's current volume nor marked removed; left out")
    except NotFound as e:
        out.notes.append(f"volume {name!r} changed while it was read and may be incomplete here: {e}")
    except StoreError:
        raise
    except Exception as e:  # one bad volume must not hide the others
        log.exception("inventory: volume %s", name)
        out.notes.append(f"volume {name!r} could not be read: {type(e).__name__}: {e}")
        out.unreadable = True
    return out


def _incarnations(store: ObjectStore, name: str, notes: list[str]) -> tuple[list[Incarnation], bool]:
    """The readable incarnation records of `name`, ascending, and whether the
    highest one is unreadable (then the name's current volume is unknown)."""
    ns = vol_mod.list_incarnations(store, name)
    out: list[Incarnation] = []
    highest_bad = False
    for n in ns:
        try:
            inc = vol_mod.read_incarnation(store, name, n)
        except CorruptObject as e:
            notes.append(f"volume {name!r}: incarnation record {n} is unreadable: {e}")
            highest_bad = n == ns[-1]
            continue
        if inc is not None:
            out.append(inc)
            highest_bad = False if n == ns[-1] else highest_bad
    return out, highest_bad


def _any(store: ObjectStore, prefix: str) -> bool:
    it = store.list(prefix)
    try:
        return next(iter(it), None) is not None
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _read_live(store: ObjectStore, ref: vol_mod.VolumeRef, created_ns: int | None, notes: list[str]
               ) -> tuple[VolumeInfo, str | None]:
    sb = vol_mod.read_superblock(store, ref)
    if sb.volume != ref.name:
        notes.append(f"volume {ref.name!r}: its superblock {keys.superblock_key(ref.root)} names volume "
                     f"{sb.volume!r}")
    pins = _pins(store, ref.root, notes, who=f"volume {ref.name!r}")
    snaps = []
    for p in sorted(pins.values(), key=lambda p: p.name):
        if p.kind != "snap":
            continue
        if p.state != READY:
            notes.append(f"volume {ref.name!r}: snapshot {p.name!r} is {p.state} (being created, or abandoned by "
                         f"a creator that died) and was left out")
            continue
        snaps.append(SnapshotInfo(p.name, list(p.position), p.created_ns / 1e9))
    image_size = _image_size(store, ref, sb, notes) if sb.layout == "block" else None
    opts = _volume_options(store, ref, sb, image_size, notes)
    recorded = _control_record(store, ref, notes)
    if recorded is not None:
        # As created at the control service (mount options included); a block
        # volume's size is the image's now (it may have been grown since).
        opts = {**recorded, **({"size": opts["size"]} if "size" in opts and "size" in recorded else {})}
    when = created_ns if created_ns is not None else sb.created_ns
    info = VolumeInfo(name=ref.name, root=ref.root, options=opts, created=when / 1e9, snapshots=tuple(snaps),
                      origin=sb.origins[0].name if sb.origins else None)
    return info, sb.origins[0].root if sb.origins else None


def _control_record(store: ObjectStore, ref: vol_mod.VolumeRef, notes: list[str]) -> dict[str, str] | None:
    """The options recorded when an agent formatted the volume (fsd/format/control_record.py), if any."""
    try:
        return control_record.decode(store.get(control_record.key(ref.root)))
    except NotFound:
        return None
    except CorruptObject as e:
        notes.append(f"volume {ref.name!r}: {control_record.key(ref.root)} is unreadable ({e}); its options were "
                     "rebuilt from the superblock instead")
        return None


def _pins(store: ObjectStore, root: str, notes: list[str] | None, who: str) -> dict[str, Pin]:
    """The volume's pins by key; an unreadable one is noted and skipped
    (unlike fsd.backup.snapshots.read_pins, which GC needs to fail closed)."""
    out: dict[str, Pin] = {}
    for k in store.list(keys.pins_prefix(root)):
        if keys.parse_pin_key(root, k) is None:
            continue
        try:
            out[k] = Pin.decode(store.get(k), k)
        except NotFound:
            continue            # removed between the listing and the read
        except CorruptObject as e:
            if notes is not None:
                notes.append(f"{who}: pin {k} is unreadable and was left out: {e}")
    return out


def _held_by(store: ObjectStore, ref: vol_mod.VolumeRef, notes: list[str]) -> tuple[str, ...]:
    """Roots of the existing clones whose ready pins keep part of a removed volume."""
    holders = set()
    for p in _pins(store, ref.root, notes, who=f"removed volume {ref.name!r} (root {ref.root})").values():
        if p.kind == "clone" and p.state == READY and p.holder and vol_mod.holder_exists(store, p.holder):
            holders.add(p.holder)
    return tuple(sorted(holders))


def _image_size(store: ObjectStore, ref: vol_mod.VolumeRef, sb: Superblock, notes: list[str]) -> int:
    """A block volume's current image size: the `image` file's size in its
    metadata (a resize grows it; the superblock keeps the size at mkfs),
    the superblock's before the first mount made the image."""
    try:
        state = vol_mod.load_state(store, ref.root, sb).state
    except (CorruptObject, vol_mod.VolumeError, NotFound) as e:
        notes.append(f"volume {ref.name!r}: its metadata does not load ({e}); its size is the one it was "
                     f"created with")
        return sb.image_size
    ent = state.entries.get(1, {}).get(IMAGE_NAME)
    node = state.inodes.get(ent[0]) if ent is not None else None
    return max(sb.image_size, node.size if node is not None else 0)


# ------------------------------------------------------------------ options


def _volume_options(store: ObjectStore, ref: vol_mod.VolumeRef, sb: Superblock, image_size: int | None,
                    notes: list[str]) -> dict[str, str]:
    """The creation options that make this volume, as a user writes them
    (what `control.validate.validate_volume_options` accepts). Options equal
    to what mkfs would pick anyway are left out (the store cannot tell
    `-o compression=none` from no option), except the ones that define a
    block volume (layout, fs, size), which are always given.

    - compression, block_size, hash: the superblock's (a volume without
      `hash`, formats 1-4, is `blake2b`);
    - history: `options.history`; a format 1-2 volume has none (`0`);
    - layout, fs, size: a block volume's; size is the image's current size;
    - a clone: `from` (see `_clone_source`), compression if it differs
      from its origin's, history, and a block clone's size. Block size,
      layout, fs and hash are its origin's: a clone cannot be given them."""
    opts: dict[str, str] = {}
    clone = bool(sb.origins)
    if clone:
        opts["from"] = _clone_source(store, ref, sb, notes)
        origin_compression = _origin_compression(store, sb)
        if sb.compression != (origin_compression or "none"):
            opts["compression"] = sb.compression
    else:
        if sb.compression != "none":
            opts["compression"] = sb.compression
        if sb.block_size != DEFAULT_BLOCK_SIZE:
            opts["block_size"] = _fmt_size(sb.block_size)
        enc = sb.encryption
        if enc is not None:            # as created: the agents' key directory holds that key
            opts["encryption"], opts["key"] = enc.cipher, enc.key_name
        elif sb.content_hash != "blake3":
            opts["hash"] = sb.content_hash
        if sb.layout == "block":
            opts["layout"] = "block"
            opts["fs"] = sb.block_fs
    if sb.history_s != DEFAULT_HISTORY_S:
        opts["history"] = _fmt_duration(sb.history_s)
    if sb.layout == "block":
        opts["size"] = _fmt_size(image_size if image_size is not None else sb.image_size)
    return opts


def _origin_compression(store: ObjectStore, sb: Superblock) -> str | None:
    o = sb.origins[0]
    try:
        osb = Superblock.decode(store.get(keys.superblock_key(o.root)), keys.superblock_key(o.root))
    except (NotFound, CorruptObject):
        return None
    return osb.compression


def _clone_source(store: ObjectStore, ref: vol_mod.VolumeRef, sb: Superblock, notes: list[str]) -> str:
    """`from=` naming the state the clone was made from (superblock
    origins[0]: the origin's name and position):

    1. `ORIGIN@SNAP`: a ready user snapshot of the origin at that position
       (the clone was made from it, or from a moment whose state it holds);
    2. `ORIGIN@TIME`: the commit time of the origin's segment at that
       position (its writer's clock), rounded up to the microsecond so that
       "the last commit at or before TIME" is that segment;
    3. the clone's own creation time, when that segment is gone (GC or
       the origin's removal deleted it): noted in `notes`."""
    from fsd.backup.history import format_ns
    o = sb.origins[0]
    pins = _pins(store, o.root, None, who="")
    snaps = [p for p in pins.values() if p.kind == "snap" and p.state == READY and p.position == o.position]
    if snaps:
        best = min(snaps, key=lambda p: (p.created_ns > sb.created_ns, p.name))
        return f"{o.name}@{best.name}"
    try:
        at_ns = vol_mod.read_segment(store, o.root, *o.position).created_ns
    except (NotFound, CorruptObject):
        notes.append(f"volume {ref.name!r}: the commit of {o.name!r} it was cloned from (position "
                     f"{o.position[0]}/{o.position[1]}) is no longer in the store; from= names the clone's "
                     f"creation time instead")
        at_ns = sb.created_ns
    at_ns = -(-at_ns // 1000) * 1000
    return f"{o.name}@{format_ns(at_ns, precise=True)}"


_SIZE_UNITS = (("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))


def _fmt_size(n: int) -> str:
    """Bytes as `fsd.options.parse_size` reads them: 64K, 1M, 10G, or bytes."""
    for unit, mult in _SIZE_UNITS:
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def _fmt_duration(s: float) -> str:
    """Seconds as `fsd.options.parse_duration` reads them: 0, 30m, 2h, 1d, 90s, 0.5s."""
    if s <= 0:
        return "0"
    if s == int(s):
        n = int(s)
        for unit, mult in (("d", 86400), ("h", 3600), ("m", 60)):
            if n % mult == 0:
                return f"{n // mult}{unit}"
        return f"{n}s"
    text = f"{s:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"
