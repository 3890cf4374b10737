"""User snapshots of a volume: named, consistent, metadata-only, pinned
against GC (docs/format.md, "Pins and user snapshots").

A snapshot is a metadata snapshot (FRYS) at a committed journal position
plus a pin record naming it (`fsd.format.pin`). Creating one costs one
state load and one snapshot upload, whatever the volume's data size: the
data objects are shared with the live volume, and GC keeps those the
snapshot references for as long as the pin exists.

On a volume mounted on this host, `flush_local_mount` first hands the
kernel's dirty pages to the daemon and commits them (and, under
durability=local, waits until they are uploaded), so the snapshot holds
everything written before the call.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fsd import failpoints
from fsd.format import keys
from fsd.format.dataobj import HashSpec
from fsd.format.framing import CorruptObject
from fsd.format.pin import PENDING, PENDING_TIMEOUT_NS, READY, Pin
from fsd.format.snapshot import decode_snapshot
from fsd.meta.state import MetaState
from fsd.store.base import NotFound, ObjectStore, PreconditionFailed
from fsd.volume import objects as vol_mod
from fsd.volume.objects import snapshot_refs
from fsd.volume.retention import PinRoots, pin_roots

log = logging.getLogger("ferry.snapshots")
KIND = "snap"


class SnapshotError(Exception):
    """A snapshot operation that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    state: str                  # ready | pending | abandoned
    position: tuple[int, int]
    created_ns: int


def read_pins(store: ObjectStore, root: str) -> dict[str, Pin]:
    """Every pin of the volume by key. A pin that does not decode raises
    CorruptObject: GC must not guess what it would have kept."""
    out: dict[str, Pin] = {}
    for k in store.list(keys.pins_prefix(root)):
        if keys.parse_pin_key(root, k) is None:
            continue
        try:
            out[k] = Pin.decode(store.get(k), k)
        except NotFound:
            continue            # removed between the listing and the read
    return out


def gc_pins(store: ObjectStore, root: str, now_ns: int) -> tuple[PinRoots, set[tuple[bytes, int]]]:
    """What the pins ask of a GC pass, and the references of the pinned
    snapshots (to be read after the pass's base is established). The
    `sweep` of the result lists abandoned pins and the ready clone pins of
    clones that were never completed (`fsd.backup.clones`), with their holders."""
    pins = read_pins(store, root)
    pr = pin_roots(pins, now_ns)
    refs: set[tuple[bytes, int]] = set()
    for pos in pr.pinned:
        refs |= snapshot_refs(store, root, pos)
    return replace(pr, sweep=stale_pins(store, pins, now_ns)), refs


def stale_pins(store: ObjectStore, pins: dict[str, Pin], now_ns: int) -> tuple[tuple[str, str | None], ...]:
    """(key, holder) of pins to delete: pending ones whose creator died, and
    ready clone pins whose clone never got its incarnation record (its
    creator died just before; fsd/backup/clones.py)."""
    out: list[tuple[str, str | None]] = []
    for k, p in sorted(pins.items()):
        if p.abandoned(now_ns) or (p.kind == "clone" and p.state == READY and p.holder
                                   and now_ns - p.created_ns > PENDING_TIMEOUT_NS
              and not vol_mod.holder_exists(store, p.holder)):
            out.append((k, p.holder))
    return tuple(out)


def sweep_pins(store: ObjectStore, sweep: tuple[tuple[str, str | None], ...]) -> None:
    """Delete what `gc_pins` found abandoned: the holder's root (a clone
    that was never completed) first, then the pin that names it."""
    for key, holder in sweep:
        if holder and not vol_mod.holder_exists(store, holder):
            log.info("deleting %s, a clone that was never completed (its pin %s was abandoned)", holder, key)
            vol_mod.delete_all(store, holder)
        store.delete(key)


def read_pin(store: ObjectStore, root: str, snap: str) -> Pin | None:
    """The user snapshot pin `snap` of the volume at `root`, if any."""
    return _read(store, keys.pin_key(root, KIND, snap))


def committed_position(store: ObjectStore, root: str) -> tuple[int, int]:
    """The newest journal key (epoch, seq), from a listing of the tail."""
    view = vol_mod.list_journal(store, root, tail=True)
    e = max(view.seqs, default=0)
    return (e, max(view.seqs[e])) if e else (0, 0)


def create(store: ObjectStore, volume: str, snap: str, *, at_ns: int | None = None,
           clock: Callable[[], int] = time.time_ns) -> SnapshotInfo:
    """Snapshot what the store holds of `volume` now (commit a local mount
    first with `flush_local_mount`), or, with `at_ns`, its state as of that
    moment (inside its history window: fsd/backup/history.py)."""
    keys.validate_snapshot_name(snap)
    ref, sb = vol_mod.locate(store, volume)
    root = ref.root
    key = keys.pin_key(root, KIND, snap)
    started = clock()
    pending = Pin(kind=KIND, name=snap, state=PENDING, position=committed_position(store, root), created_ns=started)
    try:
        store.put(key, pending.encode(), if_none_match=True)
    except PreconditionFailed:
        old = _read(store, key)
        if old is None or not old.abandoned(clock()):
            why = "being created" if old is not None and old.state == PENDING else "exists already"
            raise SnapshotError(f"snapshot {snap!r} of volume {volume!r} {why}; pick another name or "
                                f"remove it first (ferry fs snapshot rm)") from None
        store.delete(key)           # the creator of an abandoned one died: start over
        return create(store, volume, snap, clock=clock)
    try:
        failpoints.hit("snapshot_after_pending")
        if at_ns is not None:
            from fsd.backup import history
            last, state, next_ino = history.state_at(store, root, sb, at_ns)
            vol_mod.write_snapshot(store, root, *last, state, next_ino=next_ino)
        else:
            loaded = vol_mod.load_state(store, root, sb)
            last = loaded.last
            vol_mod.write_snapshot(store, root, *last, loaded.state)
        if clock() - started > PENDING_TIMEOUT_NS // 2:
            raise SnapshotError(f"creating snapshot {snap!r} took too long; GC may no longer wait for it. "
                                "Try again.")
        ready = Pin(kind=KIND, name=snap, state=READY, position=last, created_ns=started)
        store.put(key, ready.encode())
    except BaseException:
        # an abandoned pending pin is cleaned by GC later
        with contextlib.suppress(Exception):
            store.delete(key)
        raise
    log.info("volume %s: snapshot %s at segment %s", volume, snap, last)
    return SnapshotInfo(snap, READY, last, started)


def _read(store: ObjectStore, key: str) -> Pin | None:
    try:
        return Pin.decode(store.get(key), key)
    except NotFound:
        return None


def list_all(store: ObjectStore, volume: str, *, now_ns: int | None = None) -> list[SnapshotInfo]:
    ref, _sb = vol_mod.locate(store, volume)
    now = now_ns if now_ns is not None else time.time_ns()
    out = []
    for _k, p in sorted(read_pins(store, ref.root).items()):
        if p.kind == KIND:
            state = "abandoned" if p.abandoned(now) else p.state
            out.append(SnapshotInfo(p.name, state, p.position, p.created_ns))
    return out


def remove(store: ObjectStore, volume: str, snap: str) -> None:
    """Forget the snapshot; the next GC pass frees what only it kept."""
    keys.validate_snapshot_name(snap)
    ref, _sb = vol_mod.locate(store, volume)
    key = keys.pin_key(ref.root, KIND, snap)
    if store.head(key) is None:
        raise SnapshotError(f"volume {volume!r} has no snapshot {snap!r} (list them: ferry fs snapshot ls)")
    store.delete(key)


def open_state(store: ObjectStore, volume: str, snap: str) -> tuple[vol_mod.VolumeRef, MetaState]:
    """The metadata of a ready snapshot (what export and clones read)."""
    keys.validate_snapshot_name(snap)
    ref, sb = vol_mod.locate(store, volume)
    pin = _read(store, keys.pin_key(ref.root, KIND, snap))
    if pin is None or pin.state != READY:
        raise SnapshotError(f"volume {volume!r} has no ready snapshot {snap!r} (list them: ferry fs snapshot ls)")
    key = keys.snapshot_key(ref.root, *pin.position)
    try:
        _e, _s, next_ino, records = decode_snapshot(store.get(key), key)
    except (NotFound, CorruptObject) as e:
        raise SnapshotError(f"snapshot {snap!r} of {volume!r}: its metadata is unreadable: {e}") from None
    state = MetaState.from_records(sb.block_size, records)
    state.next_ino = max(state.next_ino, next_ino)
    return ref, state


def lookup(state: MetaState, path: str) -> int:
    """Inode of `path` ('a/b/c', relative to the root) in `state`; KeyError if absent."""
    ino = 1
    for part in filter(None, path.split("/")):
        ino = state.entries[ino][part.encode()][0]
    return ino


def read_file(store: ObjectStore, root: str, state: MetaState, ino: int, content_hash: HashSpec) -> bytes:
    """The whole content of regular file `ino` in a (snapshot) state, from
    its data objects (named by the volume's `content_hash`) and inline
    patches; holes read as zeros."""
    from fsd.format.dataobj import decode_block
    node = state.inodes[ino]
    bs = state.block_size
    out = bytearray(node.size)
    for idx, ref in state.blocks.get(ino, {}).items():
        key = keys.data_key(root, ref.hash, ref.epoch)
        raw = decode_block(store.get(key), ref.hash, key, content_hash)[:ref.length]
        end = min(idx * bs + len(raw), node.size)
        out[idx * bs:end] = raw[:end - idx * bs]
    for idx, pl in state.patches.get(ino, {}).items():
        for off, data in pl:
            start = idx * bs + off
            end = min(start + len(data), node.size)
            if end > start:
                out[start:end] = data[:end - start]
    return bytes(out)


# ------------------------------------------------------------- local mount
def _syncfs(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _freeze_thaw(mp: Path) -> None:
    """A block volume's kernel filesystem: freezing it writes everything and
    leaves it clean on disk (no journal to replay), and its flush commits
    that state in ferry; thawing lets writers go on."""
    import subprocess
    r = subprocess.run(["fsfreeze", "-f", str(mp)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SnapshotError(f"cannot freeze {mp} to commit it: {r.stderr.strip()}; no snapshot was made")
    subprocess.run(["fsfreeze", "-u", str(mp)], capture_output=True, text=True)


def flush_local_mount(store_url: str, volume: str, *, timeout: float = 60.0) -> Path | None:
    """If `volume` of `store_url` is mounted on this host, commit what was
    written to it: syncfs hands the kernel's dirty pages to the daemon, an
    fsync of the root directory commits the whole volume (a block volume's
    kernel filesystem is frozen and thawed instead), and under
    durability=local the daemon's status must then show nothing left to
    upload (its status file is rewritten every second, so that wait costs
    up to a second; under durability=remote the fsync alone is enough).
    Returns the mountpoint, or None if it is not mounted here."""
    from fsd.rundir import run_dir
    reg_dir = run_dir() / "mounts"
    entries = []
    for p in reg_dir.glob("*.json") if reg_dir.exists() else []:
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if d.get("volume") == volume and d.get("store") == store_url:
            entries.append(d)
    for d in entries:
        mp = Path(d["mountpoint"])
        if d.get("layout") == "block":
            _freeze_thaw(mp)
        else:
            fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY)
            try:
                _syncfs(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
        after = time.time_ns()
        status = Path(d["cache_dir"]) / "status.json"
        try:
            durability = json.loads(status.read_text()).get("durability")
        except (OSError, ValueError):
            durability = None
        if durability == "remote":
            return mp           # its fsync returned: everything written is committed in the store
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = json.loads(status.read_text())
            except (OSError, ValueError):
                st = {}
            if st.get("updated_ns", 0) > after and not st.get("upload_lag_s"):
                break
            if time.monotonic() > deadline:
                raise SnapshotError(f"volume {volume!r} mounted on {mp} did not upload what was written "
                                    f"within {timeout:g}s (store unreachable?); no snapshot was made")
            time.sleep(0.05)
        return mp
    return None
