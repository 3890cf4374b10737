"""Running one mounted volume: the single place where fsd's parts are wired.

`serve` is a sequence of named steps, and their order is what makes a
mount correct:
  1. `open_volume`: read the superblock, re-check that the store honours
     conditional writes, lock the cache directory (one daemon per cache dir);
  2. `recover_local`: if a `durability=local` mount of this cache dir
     crashed, append what it acknowledged but had not uploaded to its own
     epoch and seal it (decisions: the pure `fsd.datapath.recovery`);
  3. `claim`: claim the next epoch, seal older ones (fencing, decided by
     the pure `fsd.volume.fencing`), write our begin segment;
  4. `assemble`: only then rebuild metadata (snapshot + replay): after the
     seal, nothing an old owner writes can count any more; wire the parts;
  5. `serve_fuse` until unmounted, then commit everything; `release`:
     snapshot and seal our own epoch ("release") so the next mount needs no
     --takeover.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pyfuse3
import trio

from fsd.block import stack as blockstack
from fsd.datapath.blockio import BlockIO
from fsd.datapath.cache.blockcache import BlockCache
from fsd.datapath.cache.filler import CacheFiller
from fsd.datapath.committer import Committer
from fsd.datapath.data import DataLayer
from fsd.datapath.fuse_ops import FerryOperations
from fsd.datapath.localjournal import LocalJournal
from fsd.format.dataobj import HashSpec
from fsd.format.superblock import BLOCK_FORMAT, Superblock
from fsd.gc.live import Maintainer, MaintenanceConfig, MountSnapshot
from fsd.lifecycle import resume
from fsd.lifecycle.kernel_tuning import set_io_flusher, tune_bdi
from fsd.meta.ops import FsError, MetaOps
from fsd.meta.state import ROOT_INO, MetaState
from fsd.options import DEFAULT_SIZE_LIMIT, MountOptions
from fsd.rundir import registry_path
from fsd.store import open_store
from fsd.store.aio import AsyncStore
from fsd.store.metered import MeteredStore
from fsd.store.sealing import KeyRing, hash_spec
from fsd.tasks import Background, Wakeup
from fsd.volume import objects as vol_mod
from fsd.volume.fencing import WriterPosition
from fsd.volume.scrub import Scrubber, ScrubConfig

log = logging.getLogger("ferry.mount")


@dataclass
class MountConfig:
    store_url: str
    volume: str
    cache_dir: Path
    mountpoint: Path
    options: MountOptions
    takeover: bool = False
    allow_unfenced: bool = False
    ring: KeyRing | None = None      # keys of encrypted volumes (--key-file / the agent's --key-dir)


def _write_atomic(path: Path, data: bytes) -> None:
    # A temp name per writer thread: the 1 s status writer and the unmount's
    # "releasing" update may run at the same moment in two worker threads;
    # a shared temp file made one os.replace fail and killed the release.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CacheDir:
    """The per-mount local directory: lock, owner record, block cache, status."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None

    def lock(self) -> None:
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise vol_mod.VolumeError(
                f"cache directory {self.path} is in use by another ferry mount; "
                f"give each mount its own --cache-dir") from None
        self._lock_fd = fd

    def read_owner(self) -> dict | None:
        try:
            return msgpack.unpackb((self.path / "owner").read_bytes(), raw=False)
        except (FileNotFoundError, ValueError, msgpack.UnpackException):
            return None

    def write_owner(self, owner: dict) -> None:
        _write_atomic(self.path / "owner", msgpack.packb(owner, use_bin_type=True))

    def write_status(self, status: dict) -> None:
        _write_atomic(self.path / "status.json", json.dumps(status).encode())


# ------------------------------------------------------------------ the steps


@dataclass
class Opened:
    """Step 1: the store, the volume's superblock, our locked cache dir."""

    store: MeteredStore          # every request timed, its errors counted (the agent's metrics)
    astore: AsyncStore
    ref: vol_mod.VolumeRef       # name and root (key prefix) of the volume
    sb: Superblock
    cache_dir: CacheDir
    ljournal: LocalJournal
    owner_epoch: int | None      # the epoch this cache dir's owner record names, if it is this volume's
    owner_token: str | None      # proof that that epoch was ours
    cache_tokens: tuple[str, ...]  # every claim token this cache dir may have used (owner's, and a pending one)
    content_hash: HashSpec       # names and checks blocks: the superblock's hash, or an encrypted volume's keyed one


@dataclass
class Parts:
    """Step 4: the running filesystem's objects, wired once."""

    epoch: int
    state: MetaState
    ops: MetaOps
    data: DataLayer
    pos: WriterPosition
    committer: Committer
    fsops: FerryOperations
    maintainer: Maintainer
    filler: CacheFiller
    background: Background
    scrubber: Scrubber


async def serve(cfg: MountConfig, on_ready: Callable[[], None] | None = None) -> int:
    """Mount, serve until unmounted, release. Returns the process exit code.

    The order is what makes this safe (see the module docstring): open,
    recover this cache dir's own crashed epoch, claim ours (sealing older
    ones), only then load the metadata, serve, release."""
    phases = _PhaseClock()
    opened = await open_volume(cfg)
    phases.mark("open")
    await recover_local(cfg, opened)
    phases.mark("local recovery")
    epoch = await claim(cfg, opened)
    phases.mark("claim")
    parts = await assemble(cfg, opened, epoch)
    phases.mark("metadata")
    log.info("volume %s: ready to serve in %s", cfg.volume, phases)
    try:
        block = BlockStack(cfg, opened.sb) if opened.sb.layout == "block" and not cfg.options.image_only else None
        if not await serve_fuse(cfg, opened, parts, on_ready, block):
            return 1
        rc = await release(cfg, opened, parts)
        return 1 if block is not None and block.failed else rc
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(parts.filler.close)   # queued cache copies reach the disk


class _PhaseClock:
    """Where a mount's start-up time went, for its log line: a slow mount
    (a long local recovery, a long replay) says which step was slow."""

    def __init__(self) -> None:
        self._last = trio.current_time()
        self._start = self._last
        self._parts: list[str] = []

    def mark(self, name: str) -> None:
        now = trio.current_time()
        self._parts.append(f"{name} {now - self._last:.2f}")
        self._last = now

    def __str__(self) -> str:
        return f"{self._last - self._start:.2f} s ({', '.join(self._parts)})"


async def open_volume(cfg: MountConfig) -> Opened:
    """Read the superblock, re-check conditional writes, lock the cache dir."""
    t = trio.to_thread.run_sync
    store = MeteredStore(await t(lambda: open_store(cfg.store_url, ring=cfg.ring)))
    ref, sb = await t(vol_mod.locate, store, cfg.volume)
    content_hash = await t(hash_spec, store, ref.root, sb)     # an encrypted volume's key is checked here
    if sb.fencing == "conditional" or not cfg.allow_unfenced:
        await t(vol_mod.check_fencing_support, store, cfg.allow_unfenced)
    cache_dir = CacheDir(cfg.cache_dir)
    cache_dir.lock()
    owner = cache_dir.read_owner()
    mine = bool(owner and owner.get("uuid") == sb.uuid and owner.get("volume") == cfg.volume)
    ljournal = await t(LocalJournal, cfg.cache_dir / "journal")
    mine_owner = owner if mine and owner else {}
    return Opened(store=store, astore=AsyncStore(store, limit=32), ref=ref, sb=sb, cache_dir=cache_dir,
                  ljournal=ljournal, owner_epoch=mine_owner.get("epoch"), owner_token=mine_owner.get("token"),
                  cache_tokens=tuple(t for t in (mine_owner.get("token"), mine_owner.get("next_token")) if t),
                  content_hash=content_hash)


async def recover_local(cfg: MountConfig, opened: Opened) -> None:
    """Batches a crashed `durability=local` mount of this cache dir had
    acknowledged but not uploaded: append them to its own epoch and seal it
    (`fsd.datapath.recovery` says why and when that is allowed). The local journal is
    cleared only once the store holds everything it can."""
    t = trio.to_thread.run_sync
    entries = await t(opened.ljournal.entries)
    if not entries:
        return
    report = await t(lambda: resume.recover_local_journal(
        opened.store, opened.ref.root, entries, own_epoch=opened.owner_epoch,
        compress=opened.sb.compression == "zstd", content_hash=opened.content_hash))
    resume.log_report(cfg.volume, report)
    await t(opened.ljournal.clear)


async def claim(cfg: MountConfig, opened: Opened) -> int:
    """Claim the next epoch (sealing older ones as `fsd.volume.fencing` decides)
    and record it as ours in the cache dir.

    The claim's token is written into the owner record (as `next_token`)
    before the claim: a crash between the claim and the final owner record
    then still leaves proof that the newest epoch is this cache dir's own,
    so the next mount here needs no --takeover."""
    t = trio.to_thread.run_sync
    token = secrets.token_hex(16)
    base = {"volume": cfg.volume, "uuid": opened.sb.uuid}
    await t(opened.cache_dir.write_owner, {**base, "epoch": opened.owner_epoch, "token": opened.owner_token,
                                           "next_token": token})
    epoch, token = await t(lambda: vol_mod.claim_epoch(opened.store, opened.ref.root, cache_tokens=opened.cache_tokens,
                                                       takeover=cfg.takeover, token=token))
    await t(opened.cache_dir.write_owner, {**base, "epoch": epoch, "token": token})
    return epoch


async def assemble(cfg: MountConfig, opened: Opened, epoch: int) -> Parts:
    """Rebuild the metadata (working copy or snapshot, then replay) and wire
    the filesystem's parts."""
    t = trio.to_thread.run_sync
    sb = opened.sb
    wc = await t(_open_working_copy, cfg.cache_dir / "meta.db", sb.block_size)
    loaded = await t(vol_mod.load_state, opened.store, opened.ref.root, sb, wc)
    state = loaded.state
    log.info("volume %s: epoch %d, metadata rebuilt from %s up to segment %s (%d segments replayed, %d inodes)",
             cfg.volume, epoch, loaded.source, loaded.last, loaded.replayed, len(state.inodes))
    if wc is not None:
        # The begin segment (epoch, 1) carries no records: the copy is exact there.
        try:
            if loaded.local_advanced and await t(wc.position, sb.uuid) == loaded.last:
                await t(wc.advance, (epoch, 1))        # it already equals `state`
            else:
                await t(wc.reset, sb.uuid, state, (epoch, 1))
        except Exception as e:  # noqa: BLE001 - an accelerator only
            log.warning("volume %s: local working copy disabled: %r", cfg.volume, e)
            wc = None
    ops = MetaOps(state)
    cache = await t(lambda: BlockCache(cfg.cache_dir / "blocks", cfg.options.cache_size, opened.content_hash))
    filler = CacheFiller(cache, cfg.volume)
    bio = BlockIO(volume=cfg.volume, root=opened.ref.root, epoch=epoch, astore=opened.astore, cache=cache,
                  filler=filler,
                  compress=sb.compression == "zstd", content_hash=opened.content_hash,
                  cpu_limiter=trio.CapacityLimiter(4), origin_roots=tuple(o.root for o in sb.origins))
    pos = WriterPosition(epoch=epoch, next_seq=2)
    wakeup, background = Wakeup(), Background()
    data = DataLayer(ops, bio, sb.block_size, cfg.options.dirty_limit, request_commit=wakeup.set,
                     is_fenced=lambda: pos.fenced, background=background)
    committer = Committer(volume=cfg.volume, root=opened.ref.root, ops=ops, data=data, bio=bio,
                          astore=opened.astore, position=pos, wakeup=wakeup,
                          interval=cfg.options.commit_interval, snapshot_every=cfg.options.snapshot_every,
                          local=opened.ljournal if cfg.options.durability == "local" else None,
                          working_copy=wc)
    due: MountSnapshot | None = None
    if loaded.since_snapshot >= cfg.options.snapshot_every and loaded.last == (epoch, 1):
        # Mounts too short for the background pass (a run of crashes) left the
        # journal long: snapshot the loaded state, exact at our begin segment
        # (nothing changes it before serving), and upload it in the background.
        records = await t(lambda: list(state.snapshot_records()))
        due = MountSnapshot(position=(epoch, 1), records=records, next_ino=state.next_ino,
                            since=loaded.since_snapshot)
    committer.stats.segments_since_snapshot = 0 if due else loaded.since_snapshot
    o = cfg.options
    maintainer = Maintainer(volume=cfg.volume, root=opened.ref.root, uuid=sb.uuid, store=opened.store,
                            committer=committer, bio=bio, state=state, wc_path=cfg.cache_dir / "meta.db",
                            block_size=sb.block_size,
                            cfg=MaintenanceConfig(gc=o.gc, gc_interval=o.gc_interval, gc_grace=o.gc_grace,
                                                  history=sb.history_s),
                            base=loaded.start if loaded.source == "snapshot" else (0, 0), due_at_mount=due)
    for ino in ops.orphans():          # unlinked-but-open files of a crashed mount
        ops.purge(ino)
    fsops = FerryOperations(ops=ops, data=data, committer=committer, volume=cfg.volume,
                            size_limit=cfg.options.size or DEFAULT_SIZE_LIMIT, holes=sb.format >= BLOCK_FORMAT)
    scrubber = await t(lambda: Scrubber(      # reads its progress file: not on the trio loop
        volume=cfg.volume, roots=tuple(sb.data_roots(opened.ref.root)), store=opened.store,
        content_hash=opened.content_hash, blocks=lambda: state.blocks, progress_path=cfg.cache_dir / "scrub.json",
        cfg=ScrubConfig(interval=o.scrub_interval, rate=float(o.scrub_rate)), wall=time.time))
    return Parts(epoch=epoch, state=state, ops=ops, data=data, pos=pos, committer=committer, fsops=fsops,
                 maintainer=maintainer, filler=filler, background=background, scrubber=scrubber)


async def serve_fuse(cfg: MountConfig, opened: Opened, parts: Parts,
                     on_ready: Callable[[], None] | None, block: BlockStack | None = None) -> bool:
    """Serve FUSE until the kernel detaches, then commit everything.
    Returns False if this mount was fenced (nothing more to release).
    A block volume's ferry filesystem is mounted in the cache dir and the
    kernel filesystem on its image where the user asked (`BlockStack`)."""
    t = trio.to_thread.run_sync
    committer, data, pos = parts.committer, parts.data, parts.pos
    status = StatusReporter(cfg, opened.cache_dir, parts, opened.store, block=opened.sb.layout == "block")
    fuse_opts = {"fsname=ferry:" + cfg.volume, "subtype=ferry", "default_permissions", "allow_other",
                 "noatime"}
    fuse_mp = block.fuse_mp if block is not None else cfg.mountpoint
    try:
        if block is not None:
            await t(lambda: fuse_mp.mkdir(parents=True, exist_ok=True))
        pyfuse3.init(parts.fsops, str(fuse_mp), fuse_opts)
    except Exception as e:
        # Nothing was served: release our epoch so the next mount, anywhere,
        # needs no --takeover.
        await committer.drain()
        await t(lambda: vol_mod.seal_epoch(opened.store, opened.ref.root, parts.epoch, sealed_by=parts.epoch,
                                           reason="release"))
        raise vol_mod.VolumeError(f"cannot mount {cfg.mountpoint}: {e} (is /dev/fuse available and the "
                                  f"mountpoint an empty directory?)") from None
    reg = registry_path(cfg.mountpoint)
    reg.parent.mkdir(parents=True, exist_ok=True)
    reg.write_text(json.dumps({"mountpoint": os.path.abspath(cfg.mountpoint), "pid": os.getpid(),
                               "volume": cfg.volume, "store": cfg.store_url,
                               "cache_dir": str(cfg.cache_dir), "layout": opened.sb.layout,
                               "fuse_mountpoint": str(fuse_mp)}))
    unmounted = False
    try:
        async with trio.open_nursery() as n:
            n.start_soon(committer.run)
            await n.start(parts.background.run)
            n.start_soon(guarded, cfg.volume, "status writer", status.run)
            n.start_soon(guarded, cfg.volume, "signal handler", _on_signals, cfg, block)
            n.start_soon(guarded, cfg.volume, "kernel tuning", _tune_kernel, cfg, parts.fsops, fuse_mp)
            n.start_soon(guarded, cfg.volume, "snapshots and GC", parts.maintainer.run)
            n.start_soon(guarded, cfg.volume, "scrub", parts.scrubber.run)
            if block is not None:
                n.start_soon(block.run, parts.fsops, on_ready, parts.epoch)
            else:
                if on_ready:
                    on_ready()
                log.info("volume %s mounted on %s (epoch %d, durability %s)", cfg.volume, cfg.mountpoint,
                         parts.epoch, cfg.options.durability)
            await pyfuse3.main(min_tasks=4)
            unmounted = True
            # The kernel has flushed its dirty pages to us and detached: commit all.
            await status.write("releasing")
            log.info("volume %s: unmounted; committing %d dirty bytes", cfg.volume,
                     data.dirty_bytes + data.inflight_bytes)
            await committer.stop()
            await committer.drain()
            if not pos.fenced:
                try:
                    await t(opened.ljournal.clear)     # every batch is in the store now
                except OSError as e:
                    # Harmless: the next mount finds these batches in the store.
                    log.warning("volume %s: cannot clear the local journal: %s", cfg.volume, e)
            n.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=not unmounted)
    if pos.fenced:
        await status.write("fenced")
        reg.unlink(missing_ok=True)
        log.error("volume %s: this mount was fenced by a newer owner (or could not commit); changes after "
                  "that were not committed", cfg.volume)
        return False
    reg.unlink(missing_ok=True)
    return True


async def release(cfg: MountConfig, opened: Opened, parts: Parts) -> int:
    """Everything is committed: snapshot if the journal grew, seal our epoch."""
    t = trio.to_thread.run_sync
    pos, committer = parts.pos, parts.committer
    last_seq = pos.next_seq - 1
    if committer.stats.segments_since_snapshot > 0:
        records = list(parts.state.snapshot_records())
        await t(vol_mod.write_snapshot, opened.store, opened.ref.root, parts.epoch, last_seq, parts.state, records)
    sealed_at = await t(lambda: vol_mod.seal_epoch(opened.store, opened.ref.root, parts.epoch, sealed_by=parts.epoch,
                                                    reason="release", next_seq=pos.next_seq))
    if sealed_at != pos.next_seq:
        log.error("volume %s: epoch %d was sealed by someone else before release", cfg.volume, parts.epoch)
    await StatusReporter(cfg, opened.cache_dir, parts, opened.store,
                         block=opened.sb.layout == "block").write("released")
    log.info("volume %s: released epoch %d cleanly", cfg.volume, parts.epoch)
    await t(opened.store.close)
    return 0


# ------------------------------------------------------------ background work


async def guarded(volume: str, name: str, fn: Callable[..., Awaitable[None]], *args: object,
                  retry_after: float = 5.0) -> None:
    """Run a background task that must never take the daemon down: an
    exception is logged (naming the volume) and the task starts again."""
    while True:
        try:
            await fn(*args)
            return
        except Exception:  # noqa: BLE001 - the point: log, never crash the mount
            log.exception("volume %s: %s failed; it starts again in %g s", volume, name, retry_after)
        await trio.sleep(retry_after)


class StatusReporter:
    """The status file `ferry fs inspect`, `umount` and the agent read. A
    full or failing cache disk makes a write fail: that is logged (once per
    kind of error) and never stops the mount."""

    def __init__(self, cfg: MountConfig, cache_dir: CacheDir, parts: Parts, store: MeteredStore, *,
                 block: bool = False) -> None:
        self.cfg, self.cache_dir, self.parts, self.store = cfg, cache_dir, parts, store
        self.block = block     # a block volume: report its image's current size (`ferry fs resize` grows it)
        self._last_error: str | None = None
        self.base = {"volume": cfg.volume, "epoch": parts.epoch, "pid": os.getpid(), "host": socket.gethostname(),
                     "mountpoint": str(cfg.mountpoint), "store": cfg.store_url,
                     "durability": cfg.options.durability}

    def status(self, phase: str) -> dict:
        p = self.parts
        c = p.committer
        return {**self.base, "phase": phase, "next_seq": p.pos.next_seq, "fenced": p.pos.fenced,
                "dirty_bytes": p.data.dirty_bytes, "inflight_bytes": p.data.inflight_bytes,
                "upload_lag_s": round(c.upload_lag_s(), 3), "commits": c.stats.commits,
                "local_appends": c.stats.local_appends,
                "last_error": c.stats.last_error, "last_gc": p.maintainer.summary(), "updated_ns": time.time_ns(),
                "scrub": p.scrubber.summary(),
                "metrics": self.metrics(),
                **({"image_size": self._image_size()} if self.block else {})}

    def metrics(self) -> dict:
        """Counts since this daemon started, for the agent's /metrics (docs/metrics.md)."""
        p = self.parts
        return {"fsync_seconds": p.committer.stats.fsync.to_dict(), "fsync_errors": p.committer.stats.fsync_errors,
                "bytes_written": p.data.bytes_written, "reads": p.data.bio.reads.to_dict(),
                "gc_freed_bytes": p.maintainer.freed_bytes, "store": self.store.snapshot(),
                "scrub": {k: v for k, v in p.scrubber.summary().items() if k != "findings"}}

    def _image_size(self) -> int | None:
        try:
            return self.parts.ops.lookup(ROOT_INO, blockstack.IMAGE_NAME.encode()).size
        except FsError:
            return None       # not created yet (the first mount makes it)

    async def write(self, phase: str) -> None:
        try:
            await trio.to_thread.run_sync(self.cache_dir.write_status, self.status(phase))
            self._last_error = None
        except OSError as e:
            if str(e) != self._last_error:
                log.warning("volume %s: cannot write the status file in %s (%s); the mount goes on",
                            self.cfg.volume, self.cache_dir.path, e)
            self._last_error = str(e)

    async def run(self) -> None:
        while True:
            await self.write("mounted")
            await trio.sleep(1.0)


async def _tune_kernel(cfg: MountConfig, fsops: FerryOperations, fuse_mp: Path) -> None:
    await fsops.initialized.wait()
    tuned = await trio.to_thread.run_sync(tune_bdi, str(fuse_mp), cfg.options.readahead)
    log.debug("volume %s: kernel tuning %s", cfg.volume, tuned)


class BlockStack:
    """A block volume's loop device and kernel filesystem, run by the daemon
    that serves the image (fsd.block.stack holds the steps and says why).

    `run` builds the stack once ferry answers, then watches the user's
    mountpoint: a plain `umount` of the kernel filesystem is a clean stop
    too (the loop device is detached and ferry unmounted, so the daemon
    commits and releases). If the stack cannot be built, ferry is unmounted
    again and the daemon exits with 1 after releasing its epoch."""

    def __init__(self, cfg: MountConfig, sb: Superblock) -> None:
        self.cfg = cfg
        # -o size= (what `ferry volume resize` records) grows the image at mount; it never shrinks it.
        size = max(sb.image_size, (cfg.options.size or 0) // 4096 * 4096)
        self.layout = blockstack.BlockLayout(fs=sb.block_fs, image_size=size, discard=cfg.options.discard,
                                             direct_io=cfg.options.loop_direct_io)
        self.fuse_mp = blockstack.fuse_mountpoint(cfg.cache_dir)
        self.failed = False

    async def run(self, fsops: FerryOperations, on_ready: Callable[[], None] | None, epoch: int) -> None:
        t = trio.to_thread.run_sync
        cfg = self.cfg
        why = set_io_flusher()
        if why is not None:
            log.warning("volume %s: cannot mark the daemon as an I/O flusher (%s; needs CAP_SYS_RESOURCE): "
                        "under severe memory pressure, writeback through the loop device could stall",
                        cfg.volume, why)
        await fsops.initialized.wait()
        try:
            device = await t(blockstack.attach, self.fuse_mp, self.layout, cfg.mountpoint, cfg.volume)
        except Exception as e:  # noqa: BLE001 - BlockStackError, OSError...: never crash the daemon
            self.failed = True
            log.error("volume %s: cannot mount the %s image on %s: %s", cfg.volume, self.layout.fs,
                      cfg.mountpoint, e)
            await self.stop(lazy=True)
            return
        if on_ready:
            on_ready()
        log.info("volume %s mounted on %s (%s on %s, image %s; epoch %d, durability %s)", cfg.volume,
                 cfg.mountpoint, self.layout.fs, device, blockstack.image_path(self.fuse_mp), epoch,
                 cfg.options.durability)
        interval = cfg.options.trim_interval
        if not blockstack.fallocate_supported():
            log.warning("volume %s: this pyfuse3 has no fallocate, so discards and fstrim do not reach ferry "
                        "and the store keeps deleted data; install ferry's pyfuse3 (deploy/pyfuse3/install.sh)",
                        cfg.volume)
            interval = 0.0
        next_trim = trio.current_time() + interval
        try:
            while await t(blockstack.mounted, cfg.mountpoint):
                if interval and trio.current_time() >= next_trim:
                    await self._trim()
                    next_trim = trio.current_time() + interval
                await trio.sleep(1.0 if not interval else min(1.0, interval))
        except Exception:  # noqa: BLE001 - a bug here must not take the mount down; umount still works
            log.exception("volume %s: watching %s failed; a plain umount will no longer release the volume "
                          "(use ferry fs umount)", cfg.volume, cfg.mountpoint)
            return
        log.info("volume %s: %s unmounted; detaching the image", cfg.volume, cfg.mountpoint)
        await self.stop()

    async def _trim(self) -> None:
        """fstrim, so deleted files' blocks become holes and then garbage. A
        failure is logged and tried again next interval."""
        try:
            out = await trio.to_thread.run_sync(blockstack.trim, self.cfg.mountpoint, self.cfg.volume)
            log.debug("volume %s: fstrim: %s", self.cfg.volume, out)
        except blockstack.BlockStackError as e:
            log.warning("volume %s: %s", self.cfg.volume, e)

    async def stop(self, lazy: bool = False) -> bool:
        """Take the stack down (kernel filesystem, loop device, ferry). False
        if a process still uses the kernel filesystem (logged)."""
        try:
            await trio.to_thread.run_sync(lambda: blockstack.detach(self.cfg.mountpoint, self.fuse_mp, lazy=lazy))
            return True
        except blockstack.BlockStackError as e:
            log.warning("volume %s: %s", self.cfg.volume, e)
            return False


async def _on_signals(cfg: MountConfig, block: BlockStack | None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
        lazy = False
        async for _ in sigs:
            log.info("volume %s: signal received, unmounting %s", cfg.volume, cfg.mountpoint)
            if block is not None:
                if not await block.stop(lazy=lazy):
                    log.warning("volume %s: send the signal again for a lazy unmount", cfg.volume)
                    lazy = True
                continue
            cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(cfg.mountpoint)]
            r = await trio.run_process(cmd, check=False, capture_stderr=True)
            if r.returncode != 0:
                log.warning("volume %s: cannot unmount %s yet (%s); send the signal again for a lazy unmount",
                            cfg.volume, cfg.mountpoint, r.stderr.decode().strip())
                lazy = True


def _open_working_copy(path: Path, block_size: int):
    from fsd.datapath.localdb import WorkingCopy
    try:
        return WorkingCopy(path, block_size)
    except Exception as e:  # noqa: BLE001 - a damaged copy is rebuilt from the store
        log.warning("local working copy %s unusable (%r); rebuilding it", path, e)
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        try:
            return WorkingCopy(path, block_size)
        except Exception:  # noqa: BLE001
            return None
