"""Whether the mounts the agent makes still reach the host's containers.

As a Docker managed plugin the agent mounts volumes under the plugin's
propagated mount: a directory of the plugin's own mount namespace that
dockerd bind-mounts, shared, from the host, so each FUSE mount made in it
appears on the host and Docker can hand it to containers. When dockerd
restarts with `--live-restore` and no container running, it leaves the
plugin running but unmounts everything under its plugin directory on the
host (moby's daemon.Shutdown, then the plugin manager's), and its restore
does not set the shared mount up again. Where dockerd's data root is a
shared mount the plugin's mounts still reach the host through it; where it
is a slave (MountFlags=slave, dockerd in a container) they no longer do: a
new Mount would hand Docker an empty directory of the host, and a container
would write into the host's disk instead of the volume. Containers that
were running keep their own copies of their mounts and keep working.

The agent cannot see the host's mount table, so it watches a marker: a
tiny tmpfs mounted under the mount root when the agent starts. The host's
teardown unmounts it too (unmounts propagate between the shared peers), so
"marker gone" means "mounts no longer reach the host". Then the agent
refuses Mounts with a message that says what happened, leaves the daemons
that still serve containers alone, and ends itself once nothing of ours
runs: dockerd restarts an exited managed plugin, and that restart sets the
shared mount up again.

`MountMarker` is the thin adapter (a mount through mount(8), a read of
/proc/mounts); `restart_now` is the decision.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

from agent.fsd_proc import in_proc_mounts

MARKER = ".ferry-host-link"

BROKEN = ("ferry's mounts no longer reach this host: dockerd restarted with live-restore and unmounted the "
          "plugin's propagated mount, which it does not set up again. Containers still running keep their "
          "ferry volumes; no new mount can be served until the plugin restarts, which it does by itself "
          "once no container on this host uses a ferry volume (or stop them and run `docker plugin disable "
          "-f` then `docker plugin enable` on the ferry plugin)")


def restart_now(linked: bool, active: list[str]) -> bool:
    """End the agent so dockerd restarts the plugin: only when the host link is
    broken and no volume here is in use or has a daemon of ours (ending the
    plugin kills every daemon in it)."""
    return not linked and not active


class MountMarker:
    """The marker tmpfs at `<mount_root>/.ferry-host-link`."""

    def __init__(self, mount_root: Path) -> None:
        self.path = mount_root / MARKER

    def mounted(self) -> bool:
        return in_proc_mounts(self.path)

    def establish(self) -> None:
        """Mount the marker (blocking; at start, before the plugin socket serves)."""
        if self.mounted():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=0555", "ferry-host-link", str(self.path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(f"cannot mount the host-link marker at {self.path}: {r.stderr.strip()}")
