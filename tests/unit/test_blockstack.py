"""The pure parts of fsd/block/stack.py: the commands it runs and what it reads back."""
from __future__ import annotations

from pathlib import Path

import pytest

from fsd.block.stack import ext4_bytes, grow_argv, losetup_argv

DUMPE2FS = """dumpe2fs 1.47.0 (5-Feb-2023)
Filesystem volume name:   <none>
Block count:              131072
Reserved block count:     6553
Block size:               4096
Fragment size:            4096
"""


def test_ext4_size_is_block_count_times_block_size():
    assert ext4_bytes(DUMPE2FS) == 131072 * 4096
    with pytest.raises(ValueError):
        ext4_bytes("dumpe2fs 1.47.0\nBlock size: 4096\n")


def test_grow_commands():
    assert grow_argv("ext4", "/dev/loop3", Path("/mnt/x")) == ["resize2fs", "/dev/loop3"]
    assert grow_argv("xfs", "/dev/loop3", Path("/mnt/x")) == ["xfs_growfs", "/mnt/x"]   # XFS grows by mountpoint
    with pytest.raises(ValueError):
        grow_argv("btrfs", "/dev/loop3", Path("/mnt/x"))


def test_loop_is_buffered_unless_asked():
    assert "--direct-io=off" in losetup_argv(Path("/c/fuse/image"), direct_io=False)
    assert "--direct-io=on" in losetup_argv(Path("/c/fuse/image"), direct_io=True)
