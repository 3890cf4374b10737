"""agent/hostlink.py: the marker that tells a managed plugin's agent whether
its mounts still reach the host, and when it ends itself to be restarted.
The whole behaviour is tested in tests/agent/test_fuse.py (no Docker) and
tests/cluster/test_plugin.py (dockerd --live-restore)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.hostlink import MARKER, MountMarker, restart_now


@pytest.mark.parametrize("linked,active,want", [
    (True, [], False),              # all is well
    (True, ["db"], False),
    (False, ["db"], False),         # a container still uses a daemon of ours: ending would kill it
    (False, [], True),              # nothing of ours runs: end, dockerd restarts the plugin
])
def test_restart_only_when_unlinked_and_nothing_runs(linked, active, want):
    assert restart_now(linked, active) is want


def _mounts_at(path: Path) -> int:
    with open("/proc/mounts") as f:
        return sum(1 for line in f if line.split()[1] == str(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_the_marker_is_mounted_once_and_its_loss_is_seen(tmp_path):
    marker = MountMarker(tmp_path)
    assert marker.path == tmp_path / MARKER and not marker.mounted()
    try:
        marker.establish()
        marker.establish()                   # a second start of the agent in the same namespace
        assert marker.mounted() and _mounts_at(marker.path) == 1
        subprocess.run(["umount", "-l", str(marker.path)], check=True)
        assert not marker.mounted()
    finally:
        subprocess.run(["umount", "-l", str(marker.path)], capture_output=True)
