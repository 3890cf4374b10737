"""The block layout's stack: ferry file → loop device → kernel filesystem.

A `layout=block` volume holds one sparse file, `image`, at the root of its
ferry filesystem. The daemon mounts ferry in a private place (the cache
dir's `fuse/`), attaches the image to a loop device (buffered by default,
direct I/O with -o loop_direct_io=on: docs/block.md, "Buffered or direct
loop"; either way a flush of the kernel filesystem reaches ferry as an
fsync of the image = one durable commit),
makes the kernel filesystem on first use and mounts it where the user asked.
Everything ferry guarantees (epochs, fencing, durable fsync, lazy fetch,
crash recovery, GC, snapshots) applies to that one file unchanged.

Teardown is the reverse: unmount the kernel filesystem (it flushes), detach
the loop device, unmount ferry (the daemon then commits and releases).

The argument lists are built by pure functions (tested without root); the
`attach`/`detach`/`cleanup_dead` adapters run them and are blocking: callers
on a trio loop use a worker thread. Loop devices are matched by their
backing file before being detached, so a device number reused by another
volume is never touched.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ferry.blockstack")

FILESYSTEMS = ("ext4", "xfs")
IMAGE_NAME = "image"
FUSE_DIR = "fuse"


class BlockStackError(Exception):
    """A step of the stack failed; the message says which and what to do."""


@dataclass(frozen=True)
class BlockLayout:
    fs: str                # ext4 | xfs
    image_size: int        # bytes, the loop device's size
    discard: bool = False  # mount the kernel filesystem with -o discard
    # The loop device reads and writes `image` through the page cache of the
    # ferry mount (default) or with direct I/O (docs/block.md, "How the stack
    # is built"): buffered lets the FUSE writeback cache gather ext4's page
    # writes into large ferry writes; direct keeps one copy of the data in memory.
    direct_io: bool = False


def fuse_mountpoint(cache_dir: Path) -> Path:
    """Where a block volume's ferry filesystem is mounted: private to the daemon's cache dir."""
    return Path(os.path.abspath(cache_dir)) / FUSE_DIR


def image_path(fuse_mp: Path) -> Path:
    return Path(fuse_mp) / IMAGE_NAME


# ------------------------------------------------------------------ pure: commands


def losetup_argv(image: Path, *, direct_io: bool) -> list[str]:
    return ["losetup", "--find", "--show", f"--direct-io={'on' if direct_io else 'off'}", str(image)]


def mkfs_argv(fs: str, device: str) -> list[str]:
    """Make the kernel filesystem without discarding (the image is sparse
    already) and without zeroing inode tables or the journal (holes of the
    image read as zeros, so that work would only upload zeros)."""
    if fs == "ext4":
        return ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", device]
    if fs == "xfs":
        return ["mkfs.xfs", "-q", "-f", "-K", device]
    raise ValueError(f"fs must be one of {', '.join(FILESYSTEMS)}, not {fs!r}")


def mount_argv(fs: str, device: str, target: Path, *, discard: bool = False) -> list[str]:
    # ext4's lazy inode-table init would write zeros the image already reads as.
    # XFS refuses a second mount of one filesystem UUID, even while a dead
    # owner's lazily unmounted instance lingers; ferry's fencing is what
    # keeps a volume single-writer, so that check is switched off.
    opts = "noinit_itable" if fs == "ext4" else "nouuid"
    if discard:
        opts += ",discard"
    return ["mount", "-t", fs, "-o", opts, device, str(target)]


def fstrim_argv(target: Path) -> list[str]:
    return ["fstrim", str(target)]


def fallocate_supported() -> bool:
    """Whether this pyfuse3 passes fallocate to ferry (deploy/pyfuse3):
    without it, discards never reach the store and deleted data stays."""
    import pyfuse3
    return hasattr(pyfuse3.Operations, "fallocate")


# ------------------------------------------------------------------ adapters


def _run(argv: list[str], what: str, timeout: float = 300) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BlockStackError(f"{what}: {argv[0]} is not installed (apt install util-linux e2fsprogs "
                              "xfsprogs)") from None
    except subprocess.TimeoutExpired:
        raise BlockStackError(f"{what}: {' '.join(argv)} did not finish within {timeout:g}s") from None
    if r.returncode != 0:
        raise BlockStackError(f"{what}: {' '.join(argv)} failed: {(r.stderr or r.stdout).strip()}")
    return r.stdout.strip()


def mounted(path: Path) -> bool:
    """Whether anything is mounted on `path`, from /proc/mounts (abspath, not
    resolve: never stat a mount that may hang)."""
    target = os.path.abspath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == target for line in f)


def probe_fs(device: str) -> str | None:
    """The filesystem type on `device`, or None if it holds none."""
    r = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], capture_output=True, text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def loops_backed_by(image: Path) -> list[str]:
    """Loop devices whose backing file is `image` (from sysfs, no tool needed)."""
    want = os.path.abspath(image)
    out = []
    for d in sorted(Path("/sys/block").glob("loop*")):
        try:
            backing = (d / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing == want or backing == want + " (deleted)":
            out.append(f"/dev/{d.name}")
    return out


def attach(fuse_mp: Path, layout: BlockLayout, target: Path, volume: str) -> str:
    """Create the image if new, attach it to a loop device, make the kernel
    filesystem if the image holds none, mount it on `target`. Returns the
    loop device. On failure nothing stays attached."""
    image = image_path(fuse_mp)
    fd = os.open(image, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size < layout.image_size:
            os.ftruncate(fd, layout.image_size)      # sparse: costs one metadata record
            os.fsync(fd)
    finally:
        os.close(fd)
    device = _run(losetup_argv(image, direct_io=layout.direct_io),
                  f"volume {volume}: attaching {image} to a loop device")
    try:
        found = probe_fs(device)
        if found is None:
            log.info("volume %s: making %s on %s (image %d bytes)", volume, layout.fs, device, layout.image_size)
            _run(mkfs_argv(layout.fs, device), f"volume {volume}: making the {layout.fs} filesystem")
        elif found != layout.fs:
            raise BlockStackError(f"volume {volume}: the image holds {found}, not {layout.fs}; "
                                  "it was not made by this ferry volume's settings")
        elif found == "ext4":
            grow_ext4_offline(device, volume)
        _run(mount_argv(layout.fs, device, target, discard=layout.discard),
             f"volume {volume}: mounting {layout.fs} on {target}")
        if found == "xfs":
            grow_xfs_mounted(target, volume)
    except BaseException:
        subprocess.run(["losetup", "-d", device], capture_output=True)
        raise
    return device


def refresh_argv(device: str) -> list[str]:
    """Make the loop device take the image's new size."""
    return ["losetup", "--set-capacity", device]


def grow_argv(fs: str, device: str, target: Path) -> list[str]:
    """Grow the mounted kernel filesystem to the size of its device (online)."""
    if fs == "ext4":
        return ["resize2fs", device]
    if fs == "xfs":
        return ["xfs_growfs", str(target)]
    raise ValueError(f"cannot grow {fs}")


def ext4_bytes(dumpe2fs_header: str) -> int:
    """The size of an ext4 filesystem, from `dumpe2fs -h` output."""
    fields = {}
    for line in dumpe2fs_header.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip()] = v.strip()
    try:
        return int(fields["Block count"]) * int(fields["Block size"])
    except (KeyError, ValueError):
        raise ValueError("dumpe2fs -h printed no block count and block size") from None


# An ext4 this much smaller than its device was grown while mounted where
# online resizing is not allowed: it takes the rest at the next mount.
_GROW_SLACK = 1 << 20


def grow_ext4_offline(device: str, volume: str) -> bool:
    """Before mounting: if the image grew past the ext4 on it (`ferry fs
    resize` where online resizing needs CAP_SYS_RESOURCE), check the
    filesystem (e2fsck -f -p, which resize2fs requires offline) and grow it.
    True if it was grown. A filesystem e2fsck cannot repair unattended is
    left as it is (mounted at its old size, with a warning)."""
    have = ext4_bytes(_run(["dumpe2fs", "-h", device], f"volume {volume}: reading the ext4 superblock"))
    dev = int(_run(["blockdev", "--getsize64", device], f"volume {volume}: reading the size of {device}"))
    if have >= dev - _GROW_SLACK:
        return False
    log.info("volume %s: the image is %d bytes, ext4 %d: checking and growing it before mounting",
             volume, dev, have)
    r = subprocess.run(["e2fsck", "-f", "-p", device], capture_output=True, text=True, timeout=3600)
    if r.returncode >= 4:
        log.warning("volume %s: e2fsck -f -p %s exited %d, so ext4 is not grown now (it mounts at %d "
                    "bytes): %s", volume, device, r.returncode, have, (r.stdout + r.stderr).strip()[-500:])
        return False
    _run(["resize2fs", device], f"volume {volume}: growing ext4 on {device}", timeout=3600)
    return True


def grow_xfs_mounted(target: Path, volume: str) -> None:
    """Let a just-mounted XFS take all of its device: an image grown while
    the volume was not mounted (`ferry volume resize`), or a resize cut
    short after the image grew. A no-op when XFS fills the device already;
    a failure leaves the filesystem usable at its old size."""
    try:
        _run(grow_argv("xfs", "", target), f"volume {volume}: growing xfs on {target}", timeout=3600)
    except BlockStackError as e:
        log.warning("%s; it keeps its old size until grown (ferry fs resize)", e)


def grow(fuse_mp: Path, target: Path, new_size: int, volume: str) -> tuple[int, int, bool]:
    """Grow a mounted block volume: the image file (a journaled size change,
    committed before anything else moves), then the loop device, then the
    kernel filesystem. Returns (old, new image size, whether the kernel
    filesystem grew now): ext4 grows online only with CAP_SYS_RESOURCE;
    without it, it grows at the next mount (`grow_ext4_offline`). Growing
    to the current size finishes an interrupted resize. Shrinking is
    refused: neither ext4 nor XFS shrinks online."""
    if not mounted(target) or not mounted(fuse_mp):
        raise BlockStackError(f"volume {volume}: its kernel filesystem is not mounted on {target}")
    image = image_path(fuse_mp)
    old = os.stat(image).st_size
    if new_size < old:
        raise BlockStackError(f"volume {volume}: the image is {old} bytes; it can only grow, not shrink "
                              f"to {new_size} (neither ext4 nor XFS shrinks online). To make it smaller, "
                              "copy the files into a new, smaller volume")
    if new_size % 4096:
        raise BlockStackError(f"volume {volume}: the size must be a multiple of 4096 bytes, not {new_size}")
    devices = loops_backed_by(image)
    if len(devices) != 1:
        raise BlockStackError(f"volume {volume}: expected one loop device on {image}, found {devices or 'none'}")
    fs = probe_fs(devices[0])
    if fs not in ("ext4", "xfs"):
        raise BlockStackError(f"volume {volume}: {devices[0]} holds {fs or 'no filesystem'}, not ext4 or XFS")
    if new_size > old:
        fd = os.open(image, os.O_RDWR)
        try:
            os.ftruncate(fd, new_size)     # sparse: one metadata record
            os.fsync(fd)                   # committed before the filesystem may use the new space
        finally:
            os.close(fd)
    _run(refresh_argv(devices[0]), f"volume {volume}: resizing {devices[0]}")
    try:
        _run(grow_argv(fs, devices[0], target), f"volume {volume}: growing {fs} on {target}", timeout=3600)
    except BlockStackError as e:
        if fs == "ext4" and "Permission denied" in str(e):
            return old, new_size, False
        raise
    return old, new_size, True


def trim(target: Path, volume: str) -> str:
    """fstrim the kernel filesystem: its free space becomes holes in the image."""
    return _run(fstrim_argv(target), f"volume {volume}: trimming {target}", timeout=3600)


def detach(target: Path, fuse_mp: Path, *, lazy: bool = False, busy_wait: float = 5.0) -> None:
    """Unmount the kernel filesystem (which flushes it into ferry), detach
    the image's loop devices, unmount ferry. Each step is skipped when
    already done, so a second caller (the daemon noticing an unmount, a
    signal, `ferry fs umount`) is harmless. `lazy` is for a dead daemon."""
    if mounted(target):
        argv = ["umount", "-l", str(target)] if lazy else ["umount", str(target)]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0 and mounted(target):
            raise BlockStackError(f"cannot unmount {target}: {r.stderr.strip()}\n"
                                  f"  A process still uses it; find it with: fuser -vm {target}")
    for dev in loops_backed_by(image_path(fuse_mp)):
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    if not mounted(fuse_mp):
        return
    # The kernel drops the loop device's hold on the image asynchronously.
    deadline = time.monotonic() + busy_wait
    while True:
        argv = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [str(fuse_mp)]
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode == 0 or not mounted(fuse_mp):
            return
        if time.monotonic() > deadline:
            raise BlockStackError(f"cannot unmount ferry's image mount {fuse_mp}: {r.stderr.strip()}")
        time.sleep(0.05)


def cleanup_dead(target: Path, fuse_mp: Path) -> None:
    """After the daemon died: detach everything lazily, never raising."""
    try:
        detach(target, fuse_mp, lazy=True, busy_wait=2.0)
    except BlockStackError as e:
        log.warning("%s", e)
