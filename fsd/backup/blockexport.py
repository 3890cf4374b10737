"""Export of a block volume: a tar of the files inside its image.

A block volume's files live inside the kernel filesystem on `image`, so an
export reads the image of one snapshot from the store into a private sparse
file (holes are neither fetched nor written), attaches it to a loop device
and mounts it in a private place (a journal left by a crash-consistent
moment is replayed there, on the copy, never in the store), and has GNU tar
write a pax archive of the tree: nanosecond times, owners, modes, xattrs,
hard links, sparse files. Everything is removed afterwards, also on errors.

Needs root, a loop device, and free space in $TMPDIR for the image's data.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fsd.backup.exportread import BlockReader, ExportError, ExportStats, extents, pieces
from fsd.block.stack import IMAGE_NAME
from fsd.format.dataobj import HashSpec
from fsd.format.superblock import Superblock
from fsd.meta.state import ROOT_INO, MetaState
from fsd.store.base import ObjectStore
from fsd.store.sealing import hash_spec

Progress = Callable[[int, int], None]


def tar_argv(tree: Path) -> list[str]:
    """GNU tar of everything under `tree` but ext4's lost+found, to stdout."""
    return ["tar", "--create", "--format=pax", "--sparse", "--xattrs", "--xattrs-include=*", "--acls",
            "--numeric-owner", "--exclude=./lost+found", "-C", str(tree), "."]


def copy_image(store: ObjectStore, state: MetaState, roots: list[str], content_hash: HashSpec, dest: Path,
               progress: Progress | None = None, window: int = 16) -> int:
    """Write the snapshot's `image` to `dest` as a sparse file; returns the data bytes copied."""
    ino = state.entries.get(ROOT_INO, {}).get(IMAGE_NAME.encode(), (None,))[0]
    if ino is None:
        raise ExportError("this block volume has no image yet (never mounted): nothing to export")
    runs = extents(state, ino)
    total = sum(n for _o, n in runs)
    reader = BlockReader(store, state, roots, content_hash, window)
    done = 0
    try:
        with open(dest, "wb") as f:
            f.truncate(state.inodes[ino].size)
            chunks = reader.stream(pieces(state, ino, runs))
            for off, n in runs:
                pos = off
                while pos < off + n:
                    chunk = next(chunks)
                    os.pwrite(f.fileno(), chunk, pos)
                    pos += len(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
    finally:
        reader.close()
    return done


def export(store: ObjectStore, state: MetaState, sb: Superblock, roots: list[str], out: BinaryIO, *,
           progress: Progress | None = None) -> ExportStats:
    stats = ExportStats()
    work = Path(tempfile.mkdtemp(prefix="ferry-export-"))
    image, tree = work / "image", work / "tree"
    tree.mkdir()
    device = None
    try:
        stats.bytes = copy_image(store, state, roots, hash_spec(store, roots[0], sb), image, progress)
        r = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
        if r.returncode != 0:
            raise ExportError(f"cannot attach the image copy to a loop device: {r.stderr.strip()} "
                              "(exporting a block volume needs root and /dev/loop-control)")
        device = r.stdout.strip()
        opts = "nouuid" if sb.block_fs == "xfs" else "defaults"
        r = subprocess.run(["mount", "-t", sb.block_fs, "-o", opts, device, str(tree)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise ExportError(f"cannot mount the image's {sb.block_fs}: {r.stderr.strip()}")
        try:
            for _dirpath, dirnames, filenames in os.walk(tree):
                stats.entries += len(dirnames) + len(filenames)
                stats.files += len(filenames)
            proc = subprocess.Popen(tar_argv(tree), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 20):
                out.write(chunk)
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.wait() != 0:
                raise ExportError(f"tar of the image's files failed: {err.strip()}")
        finally:
            subprocess.run(["umount", str(tree)], capture_output=True)
    finally:
        if device is not None:
            subprocess.run(["losetup", "-d", device], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return stats
