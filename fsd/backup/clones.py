"""Clones: a new, writable volume made from a snapshot or a moment of an
existing one, sharing the origin's data objects (docs/format.md, "Clones").

A clone costs metadata only. Its superblock lists its *origins* (the volume
it was made from, then that volume's own origins); its BLOCK records carry
`src` k to read an object under the k-th origin's root; everything it
writes goes under its own root, so writes to either volume never show in
the other. A *clone pin* in the origin (`ORIGIN_ROOT/pins/clone/UUID`)
keeps the origin's metadata snapshot the clone was made from and every
object it references, for as long as the clone exists, even after the
origin or its snapshot is removed (`fsd.lifecycle.removal` then keeps exactly that
much of the origin and finishes with it when the last clone goes).

Creation, in an order that leaves nothing half-made visible and nothing
leaked for good (each step's crash is covered):

1. the clone pin in the origin, `pending` (GC in the origin defers data and
   snapshot deletion; an abandoned one is deleted by GC);
2. the source state is read (a user snapshot, or the state as of a moment,
   whose metadata snapshot is written into the origin under the pending pin);
3. the clone's root: superblock, claim, begin segment with the remapped
   records, release seal (unreferenced until step 5);
4. the clone pin `ready`, naming its holder (the clone's root);
5. the clone's incarnation record: the clone exists.

A crash between 4 and 5 leaves a ready pin whose holder never became a
volume: GC in the origin deletes such a pin and the holder's root once the
pin is older than the pending timeout (`fsd.backup.snapshots.gc_pins`).

Blocking (store I/O): run it in a worker thread from trio.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from fsd import failpoints
from fsd.backup import history, snapshots
from fsd.format import keys
from fsd.format.pin import PENDING, PENDING_TIMEOUT_NS, READY, Pin
from fsd.format.superblock import Origin, Superblock, make_superblock
from fsd.meta.records import BLOCK, MAX_ORIGINS
from fsd.store.base import NotFound, ObjectStore
from fsd.volume import objects as vol_mod

log = logging.getLogger("ferry.clones")
KIND = "clone"


class CloneError(vol_mod.VolumeError):
    """A clone that cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Source:
    """What `--from VOLUME[@SNAP|@TIME]` names."""

    volume: str
    snap: str | None = None       # a user snapshot
    at_ns: int | None = None      # a moment (absolute or relative to now)
    text: str = ""

    def describe(self) -> str:
        if self.snap:
            return f"snapshot {self.snap!r} of {self.volume!r}"
        if self.at_ns is not None:
            return f"{self.volume!r} as of {history.format_ns(self.at_ns)}"
        return f"{self.volume!r} as last committed"


def parse_source(text: str, now_ns: int) -> Source:
    """`VOLUME@SNAP`, `VOLUME@2026-11-29T10:15:00Z`, `VOLUME@-15m`, or a bare
    `VOLUME` (its state as last committed). ValueError explains a bad one.
    A snapshot name cannot start with '-' nor contain ':', so the forms
    never overlap."""
    vol, at, what = text.partition("@")
    keys.validate_volume_name(vol)
    if not at:
        return Source(vol, text=text)
    if not what:
        raise ValueError(f"{text!r}: say what after '@': a snapshot name, a UTC time like "
                         f"2026-11-29T10:15:00Z, or a time ago like -15m")
    if what.startswith("-") or ":" in what:
        return Source(vol, at_ns=history.parse_moment(what, now_ns), text=text)
    keys.validate_snapshot_name(what)
    return Source(vol, snap=what, text=text)


def remap(records: list, shift: int) -> list:
    """The origin's records as the clone's: a BLOCK's `src` s becomes s+shift
    (the origin's own objects, s=0, become the clone's origin 1). Shared
    list objects are not modified."""
    out = []
    for r in records:
        if r[0] == BLOCK:
            src = r[6] if len(r) > 6 else 0
            epoch = r[5] if len(r) > 5 else 0
            r = [BLOCK, r[1], r[2], r[3], r[4], epoch, src + shift]
        out.append(r)
    return out


def _read_source(store: ObjectStore, src: Source, ref: vol_mod.VolumeRef, sb: Superblock
                 ) -> tuple[tuple[int, int], list]:
    """(position, records) of the origin's state the clone starts from; the
    metadata snapshot at that position exists in the origin when this returns."""
    if src.snap is not None:
        try:
            _ref, state = snapshots.open_state(store, src.volume, src.snap)
        except snapshots.SnapshotError as e:
            raise CloneError(str(e)) from None
        pin = snapshots.read_pin(store, ref.root, src.snap)
        if pin is None:
            raise CloneError(f"snapshot {src.snap!r} of {src.volume!r} was removed meanwhile")
        return pin.position, list(state.snapshot_records())
    if src.at_ns is not None:
        try:
            pos, state, next_ino = history.state_at(store, ref.root, sb, src.at_ns)
        except history.HistoryError as e:
            raise CloneError(f"cannot clone {src.describe()}: {e}") from None
    else:
        loaded = vol_mod.load_state(store, ref.root, sb)
        pos, state, next_ino = loaded.last, loaded.state, loaded.state.next_ino
    records = list(state.snapshot_records())
    vol_mod.write_snapshot(store, ref.root, *pos, state, records=records, next_ino=next_ino)
    return pos, records


def create(store: ObjectStore, new: str, source: str | Source, options: dict[str, str] | None = None, *,
           clock: Callable[[], int] = time.time_ns) -> tuple[vol_mod.VolumeRef, Superblock, Source]:
    """Make volume `new` from `source`. Refuses (CloneError, nothing created)
    an unknown volume, snapshot or moment, a name in use, or options that
    contradict the origin (the block size is the origin's)."""
    src = source if isinstance(source, Source) else _parse(source, clock())
    keys.validate_volume_name(new)
    opts = dict(options or {})
    if vol_mod.live_volume(store, new) is not None:
        raise CloneError(f"volume {new!r} already exists in {store.url}")
    ref = vol_mod.live_volume(store, src.volume)
    if ref is None:
        raise CloneError(f"cannot clone {src.describe()}: volume {src.volume!r} does not exist in {store.url}")
    osb = vol_mod.read_superblock(store, ref)
    if "block_size" in opts:
        raise CloneError(f"a clone has its origin's block size ({osb.block_size} bytes); drop -o block_size")
    opts.setdefault("compression", osb.compression)
    if any(k in opts for k in ("layout", "fs", "size", "hash")):
        raise CloneError("a clone has its origin's layout, filesystem, image size and content hash; "
                         "drop -o layout/fs/size/hash")
    if any(k in opts for k in ("encryption", "key")):
        raise CloneError("a clone shares its origin's data objects, and so its encryption and data key; "
                         "drop -o encryption/key")
    enc = osb.encryption
    if enc is None:
        opts["hash"] = osb.content_hash     # the clone reads the origin's blocks by their names
    else:                                   # the same key family: it opens the origin's objects
        opts["encryption"], opts["key"] = enc.cipher, enc.key_name
    try:
        sb = make_superblock(new, opts, clock(), encryption=enc)
    except ValueError as e:
        raise CloneError(str(e)) from None
    sb.block_size = osb.block_size
    sb.fencing = osb.fencing
    if osb.layout == "block":       # the clone's image is the origin's, block for block
        sb.format = max(sb.format, osb.format)
        sb.options.update({k: osb.options[k] for k in ("layout", "fs", "image_size")})
    origins = (Origin(src.volume, ref.root, (0, 0), ""), *osb.origins)
    if len(origins) > MAX_ORIGINS:
        raise CloneError(f"{src.volume!r} is a clone {len(osb.origins)} levels deep; a clone of it would "
                         f"exceed {MAX_ORIGINS}. Export and import it to start a new lineage.")
    root = keys.volume_root(new, sb.uuid)
    pin_key = keys.pin_key(ref.root, KIND, sb.uuid)
    started = clock()
    pending = Pin(KIND, sb.uuid, PENDING, snapshots.committed_position(store, ref.root), started, holder=root)
    store.put(pin_key, pending.encode(), if_none_match=True)
    try:
        failpoints.hit("clone_after_pending")
        if vol_mod.is_removed(store, ref):
            raise CloneError(f"cannot clone {src.describe()}: the volume is being removed")
        pos, records = _read_source(store, src, ref, osb)
        origins = (replace(origins[0], position=pos, pin=pin_key), *origins[1:])
        sb.origins = origins
        vol_mod.write_root(store, root, sb, remap(records, 1))
        failpoints.hit("clone_before_ready")
        if clock() - started > PENDING_TIMEOUT_NS // 2:
            raise CloneError("making the clone took too long; GC may no longer wait for it. Try again.")
        store.put(pin_key, Pin(KIND, sb.uuid, READY, pos, started, holder=root).encode())
        failpoints.hit("clone_before_incarnation")
    except BaseException:
        _undo(store, pin_key, root)
        raise
    try:
        new_ref = vol_mod.commit_incarnation(store, new, sb)
    except BaseException:
        _undo(store, pin_key, root)
        raise
    log.info("volume %s: cloned from %s at segment %s (%d origin(s))", new, src.describe(), pos, len(origins))
    return new_ref, sb, src


def _parse(text: str, now_ns: int) -> Source:
    try:
        return parse_source(text, now_ns)
    except ValueError as e:
        raise CloneError(str(e)) from None


def _undo(store: ObjectStore, pin_key: str, root: str) -> None:
    """Best effort: what a failed clone left (GC finds the rest)."""
    try:
        vol_mod.delete_all(store, root)
        store.delete(pin_key)
    except Exception as e:  # noqa: BLE001 - GC deletes an abandoned pin and its holder later
        log.warning("cannot clean up a failed clone under %s: %s (GC will)", root, e)


def clones_of(store: ObjectStore, root: str) -> list[Pin]:
    """The clone pins of the volume at `root` (what keeps it partly alive after removal)."""
    return [p for p in snapshots.read_pins(store, root).values() if p.kind == KIND]


def drop_pin(store: ObjectStore, sb: Superblock) -> vol_mod.VolumeRef | None:
    """A clone being removed lets go of what it shares: its pin in its
    direct origin (that origin's own origins are held by the origin's pins,
    which its removal keeps while it has clones). Returns the origin if it
    still exists, so the caller can finish removing it if it was removed
    and waited for its clones (`fsd.lifecycle.removal.delete_volume`)."""
    if not sb.origins:
        return None
    o = sb.origins[0]
    with contextlib.suppress(NotFound):
        store.delete(o.pin)
    return vol_mod.ref_of_root(store, o.root)
