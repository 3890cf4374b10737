"""The per-mount kernel knobs: finding the mount's device and writing its bdi settings."""
from pathlib import Path

from fsd.lifecycle.kernel_tuning import DIRTY_MAX_RATIO, mount_device, tune_bdi

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
97 22 0:41 / /mnt/my\\040vol rw,nosuid,nodev,relatime shared:50 - fuse.ferry ferry:a rw,user_id=0
98 22 0:42 / /mnt/other rw - fuse.ferry ferry:b rw
99 97 0:43 / /mnt/my\\040vol rw - fuse.ferry ferry:c rw
"""


def test_mount_device_takes_the_topmost_mount_and_unescapes(tmp_path: Path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    assert mount_device("/mnt/my vol", str(mi)) == "0:43"
    assert mount_device("/mnt/other", str(mi)) == "0:42"
    assert mount_device("/mnt/none", str(mi)) is None


def test_tune_bdi_writes_readahead_and_dirty_share(tmp_path: Path, monkeypatch):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    bdi = tmp_path / "bdi" / "0:42"
    bdi.mkdir(parents=True)
    import fsd.lifecycle.kernel_tuning as kt
    monkeypatch.setattr(kt, "mount_device", lambda mp: mount_device(mp, str(mi)))
    done = tune_bdi("/mnt/other", 4 << 20, bdi_root=tmp_path / "bdi")
    assert done == {"max_ratio": DIRTY_MAX_RATIO, "read_ahead_kb": 4096}
    assert (bdi / "read_ahead_kb").read_text().strip() == "4096"
    assert (bdi / "max_ratio").read_text().strip() == str(DIRTY_MAX_RATIO)


def test_tune_bdi_without_permission_sets_nothing_and_does_not_raise(tmp_path: Path, monkeypatch):
    import fsd.lifecycle.kernel_tuning as kt
    monkeypatch.setattr(kt, "mount_device", lambda mp: "0:77")   # no such bdi dir
    assert tune_bdi("/mnt/x", 1 << 20, bdi_root=tmp_path) == {}
