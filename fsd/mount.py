"""Running one mounted volume: the single place where fsd's parts are wired.

Order matters for correctness:
  1. read the superblock and re-check that the store honours conditional writes;
  2. lock the cache directory (one daemon per cache dir);
  3. claim the next epoch, seal older ones (fencing), write our begin segment;
  4. only then rebuild metadata (snapshot + replay): after the seal, nothing
     the old owner writes can count any more;
  5. serve FUSE until unmounted; then commit everything, snapshot, and seal
     our own epoch with reason "release" so the next mount needs no --takeover.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pyfuse3
import trio

from fsd import volume as vol_mod
from fsd.blockio import BlockIO
from fsd.cache.blockcache import BlockCache
from fsd.committer import Committer
from fsd.data import DataLayer
from fsd.fencing import WriterPosition
from fsd.fuse_ops import FerryOperations
from fsd.kernel_tuning import tune_bdi
from fsd.localjournal import LocalJournal
from fsd.meta.ops import MetaOps
from fsd.options import MountOptions
from fsd.store import open_store
from fsd.store.aio import AsyncStore

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


def run_dir() -> Path:
    return Path(os.environ.get("FERRY_RUN_DIR", "/run/ferry"))


def registry_path(mountpoint: Path) -> Path:
    # abspath, not resolve(): resolving stats the mountpoint, which would
    # deadlock when called by the daemon serving it.
    h = hashlib.sha1(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return run_dir() / "mounts" / f"{h}.json"


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


async def serve(cfg: MountConfig, on_ready=None) -> int:
    """Mount, serve until unmounted, release. Returns the process exit code."""
    t = trio.to_thread.run_sync
    store = await t(open_store, cfg.store_url)
    astore = AsyncStore(store, limit=32)
    cpu = trio.CapacityLimiter(4)
    sb = await t(vol_mod.read_superblock, store, cfg.volume)
    if sb.fencing == "conditional" or not cfg.allow_unfenced:
        await t(vol_mod.check_fencing_support, store, cfg.allow_unfenced)
    cache_dir = CacheDir(cfg.cache_dir)
    cache_dir.lock()
    owner = cache_dir.read_owner()
    cache_token = None
    if owner and owner.get("uuid") == sb.uuid and owner.get("volume") == cfg.volume:
        cache_token = owner.get("token")
    epoch, token = await t(lambda: vol_mod.claim_epoch(store, cfg.volume, cache_token=cache_token,
                                                       takeover=cfg.takeover))
    cache_dir.write_owner({"volume": cfg.volume, "uuid": sb.uuid, "epoch": epoch, "token": token})
    wc = await t(_open_working_copy, cfg.cache_dir / "meta.db", sb.block_size)
    loaded = await t(vol_mod.load_state, store, cfg.volume, sb, wc)
    state, last, replayed = loaded.state, loaded.last, loaded.replayed
    log.info("volume %s: epoch %d, metadata rebuilt from %s up to segment %s (%d segments replayed, %d inodes)",
             cfg.volume, epoch, loaded.source, last, replayed, len(state.inodes))
    if wc is not None:
        # The begin segment (epoch, 1) carries no records: the copy is exact there.
        try:
            await t(wc.reset, sb.uuid, state, (epoch, 1))
        except Exception as e:  # noqa: BLE001 - an accelerator only
            log.warning("volume %s: local working copy disabled: %r", cfg.volume, e)
            wc = None
    ops = MetaOps(state)
    cache = await t(BlockCache, cfg.cache_dir / "blocks", cfg.options.cache_size)
    bio = BlockIO(volume=cfg.volume, astore=astore, cache=cache, compress=sb.compression == "zstd",
                  cpu_limiter=cpu)
    for inode_blocks in state.blocks.values():
        for ref in inode_blocks.values():
            bio.known_remote.add(ref.hash)
    data = DataLayer(ops, bio, sb.block_size, cfg.options.dirty_limit)
    pos = WriterPosition(epoch=epoch, next_seq=2)
    ljournal = await t(LocalJournal, cfg.cache_dir / "journal")
    committer = Committer(volume=cfg.volume, ops=ops, data=data, bio=bio, astore=astore, position=pos,
                          interval=cfg.options.commit_interval, snapshot_every=cfg.options.snapshot_every,
                          local=ljournal if cfg.options.durability == "local" else None,
                          working_copy=wc)
    committer.stats.segments_since_snapshot = replayed

    async def snapshot(e: int, s: int) -> None:
        records = list(state.snapshot_records())
        await t(vol_mod.write_snapshot, store, cfg.volume, e, s, state, records)
        committer.stats.segments_since_snapshot = 0
        log.info("volume %s: snapshot written at segment (%d, %d)", cfg.volume, e, s)

    committer.snapshot_hook = snapshot
    await _recover_local_journal(cfg, owner if cache_token else None, epoch, loaded, ljournal, ops, data, committer)
    for ino in ops.orphans():          # unlinked-but-open files of a crashed mount
        ops.purge(ino)
    fsops = FerryOperations(ops=ops, data=data, committer=committer, volume=cfg.volume,
                            size_limit=cfg.options.size)
    status_base = {"volume": cfg.volume, "epoch": epoch, "pid": os.getpid(), "host": socket.gethostname(),
                   "mountpoint": str(cfg.mountpoint), "store": cfg.store_url,
                   "durability": cfg.options.durability}

    def status(phase: str) -> dict:
        return {**status_base, "phase": phase, "next_seq": pos.next_seq, "fenced": pos.fenced,
                "dirty_bytes": data.dirty_bytes, "inflight_bytes": data.inflight_bytes,
                "upload_lag_s": round(committer.upload_lag_s(), 3), "commits": committer.stats.commits,
                "last_error": committer.stats.last_error, "updated_ns": time.time_ns()}

    async def status_writer() -> None:
        while True:
            await t(cache_dir.write_status, status("mounted"))
            await trio.sleep(1.0)

    async def tune_kernel() -> None:
        await fsops.initialized.wait()
        tuned = await t(tune_bdi, str(cfg.mountpoint), cfg.options.readahead)
        log.debug("volume %s: kernel tuning %s", cfg.volume, tuned)

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            lazy = False
            async for _ in sigs:
                log.info("volume %s: signal received, unmounting %s", cfg.volume, cfg.mountpoint)
                cmd = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(cfg.mountpoint)]
                r = await trio.run_process(cmd, check=False, capture_stderr=True)
                if r.returncode != 0:
                    log.warning("volume %s: cannot unmount %s yet (%s); send the signal again for a lazy unmount",
                                cfg.volume, cfg.mountpoint, r.stderr.decode().strip())
                    lazy = True

    fuse_opts = {"fsname=ferry:" + cfg.volume, "subtype=ferry", "default_permissions", "allow_other",
                 "noatime"}
    try:
        pyfuse3.init(fsops, str(cfg.mountpoint), fuse_opts)
    except Exception as e:
        # Nothing was served: release our epoch so the next mount, anywhere,
        # needs no --takeover.
        await committer.drain()
        await t(lambda: vol_mod.seal_epoch(store, cfg.volume, epoch, sealed_by=epoch, reason="release"))
        raise vol_mod.VolumeError(f"cannot mount {cfg.mountpoint}: {e} (is /dev/fuse available and the "
                                  f"mountpoint an empty directory?)") from None
    reg = registry_path(cfg.mountpoint)
    reg.parent.mkdir(parents=True, exist_ok=True)
    reg.write_text(json.dumps({"mountpoint": os.path.abspath(cfg.mountpoint), "pid": os.getpid(),
                               "volume": cfg.volume, "store": cfg.store_url,
                               "cache_dir": str(cfg.cache_dir)}))
    unmounted = False
    try:
        async with trio.open_nursery() as n:
            n.start_soon(committer.run)
            data.spawn = n.start_soon
            n.start_soon(status_writer)
            n.start_soon(on_signals)
            n.start_soon(tune_kernel)
            if on_ready:
                on_ready()
            log.info("volume %s mounted on %s (epoch %d, durability %s)", cfg.volume, cfg.mountpoint,
                     epoch, cfg.options.durability)
            await pyfuse3.main(min_tasks=4)
            unmounted = True
            # The kernel has flushed its dirty pages to us and detached: commit all.
            await t(cache_dir.write_status, status("releasing"))
            log.info("volume %s: unmounted; committing %d dirty bytes", cfg.volume,
                     data.dirty_bytes + data.inflight_bytes)
            await committer.stop()
            await committer.drain()
            if not pos.fenced:
                await t(ljournal.clear)     # every batch is in the store now
            n.cancel_scope.cancel()
    finally:
        pyfuse3.close(unmount=not unmounted)
    if pos.fenced:
        cache_dir.write_status(status("fenced"))
        reg.unlink(missing_ok=True)
        log.error("volume %s: this mount was fenced by a newer owner; changes after the takeover were "
                  "not committed", cfg.volume)
        return 1
    last_seq = pos.next_seq - 1
    if committer.stats.segments_since_snapshot > 0:
        await snapshot(epoch, last_seq)
    sealed_at = await t(lambda: vol_mod.seal_epoch(store, cfg.volume, epoch, sealed_by=epoch, reason="release",
                                                    next_seq=pos.next_seq))
    if sealed_at != pos.next_seq:
        log.error("volume %s: epoch %d was sealed by someone else before release", cfg.volume, epoch)
    cache_dir.write_status(status("released"))
    reg.unlink(missing_ok=True)
    log.info("volume %s: released epoch %d cleanly", cfg.volume, epoch)
    await t(store.close)
    return 0


async def _recover_local_journal(cfg: MountConfig, owner: dict | None, epoch: int, loaded, ljournal,
                                 ops: MetaOps, data: DataLayer, committer: Committer) -> None:
    """Re-commit what a crashed `durability=local` mount of this cache
    directory had acknowledged but not uploaded.

    Only valid when the epoch we just sealed was that mount's own (nobody
    else wrote in between): its entries then apply exactly on top of the
    replayed state. Otherwise they are stale and are dropped, loudly."""
    entries = await trio.to_thread.run_sync(ljournal.entries)
    if not entries:
        return
    own_epoch = owner.get("epoch") if owner and owner.get("epoch") == epoch - 1 else None
    done = loaded.max_batch.get(own_epoch, 0) if own_epoch else 0
    todo = [e for e in entries if own_epoch is not None and e.epoch == own_epoch and e.batch > done]
    lost = [e for e in entries if e not in todo and not (e.epoch == own_epoch and e.batch <= done)]
    if lost:
        log.error("volume %s: dropping %d locally-committed batch(es) from epoch(s) %s: another mount "
                  "owned the volume since, so they can no longer be applied", cfg.volume, len(lost),
                  sorted({e.epoch for e in lost}))
    for entry in todo:
        ops.reapply(entry.records)
        for ino, idx, off, raw in entry.blocks:
            if off is None:
                data.restore_dirty(ino, idx, raw)
            else:
                await data.restore_range(ino, idx, off, raw)
        if not await committer.commit_once() and committer.fenced:
            raise vol_mod.VolumeError("fenced while recovering the local journal")
        log.info("volume %s: recovered local batch %d of epoch %d", cfg.volume, entry.batch, entry.epoch)
    await trio.to_thread.run_sync(ljournal.clear)


def _open_working_copy(path: Path, block_size: int):
    from fsd.localdb import WorkingCopy
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
