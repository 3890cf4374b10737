"""ferry as a Docker managed plugin (issue 23): built from this checkout by
scripts/build-plugin.sh, created and enabled on real dockerds of simulated
hosts that run no host agent, then used as Docker users do."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster import dockerd as dk
from tests.cluster.conftest import TOKEN
from tests.cluster.netns import SimHost

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "ferry:test"

pytestmark = [
    pytest.mark.skipif(dk.available() is not None, reason=str(dk.available())),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None,
                       reason="mmdebstrap missing (scripts/install.sh --tests installs it)"),
]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plugin") / "ferry"
    env = {**os.environ, "FERRY_VENV": str(Path(sys.executable).parent.parent)}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "build-plugin.sh"), str(out)], capture_output=True,
                       text=True, env=env, timeout=900)
    assert r.returncode == 0, f"build-plugin.sh failed:\n{r.stderr[-3000:]}"
    assert (out / "config.json").exists() and (out / "rootfs" / "opt" / "ferry" / "entrypoint.sh").exists()
    return out


def plugin_host(cluster, name: str, plugin_dir: Path) -> dk.Dockerd:
    """A simulated host with a dockerd and the plugin enabled in it (no host agent)."""
    host = SimHost(cluster.bridge, len(cluster.hosts), name, cluster.dir)
    cluster.hosts.append(host)
    host.private_tmpfs("/run/docker/plugins")
    d = dk.Dockerd(host)
    d.docker("plugin", "create", PLUGIN, str(plugin_dir), timeout=600)
    settings = {"CONTROL": cluster.control_addr, "TOKEN": TOKEN, "STORE": cluster.store_url, "HOST_ID": name,
                "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}
    d.docker("plugin", "set", PLUGIN, *(f"{k}={v}" for k, v in settings.items()))
    d.docker("plugin", "enable", PLUGIN)
    return d


def test_the_managed_plugin_serves_moves_and_refuses_disable_while_in_use(cluster, plugin_dir):
    d1 = plugin_host(cluster, "p1", plugin_dir)
    d2 = None
    try:
        d1.docker("volume", "create", "-d", PLUGIN, "-o", "durability=remote", "pv")
        d1.run("--rm", "-v", "pv:/data", dk.IMAGE, "sh", "-c",
               "echo from-p1 > /data/f && dd if=/dev/zero of=/data/blob bs=1024 count=2000 conv=fsync 2>/dev/null")
        # the volume follows to a second host running the plugin
        d2 = plugin_host(cluster, "p2", plugin_dir)
        out = d2.run("--rm", "--volume-driver", PLUGIN, "-v", "pv:/data", dk.IMAGE, "sh", "-c",
                     "cat /data/f; wc -c < /data/blob").stdout.split()
        assert out == ["from-p1", "2048000"], out
        # disabling the plugin under a running container is refused; the container keeps its data
        d1.run("-d", "--name", "holder", "-v", "pv:/data", dk.IMAGE, "sleep", "300")
        r = d1.docker("plugin", "disable", PLUGIN, check=False)
        assert r.returncode != 0 and "in use" in r.stderr, r
        assert d1.docker("exec", "holder", "cat", "/data/f").stdout.strip() == "from-p1"
        d1.docker("exec", "holder", "sh", "-c", "echo again > /data/g && sync")
        d1.docker("rm", "-f", "holder")
        # Docker refuses even then: every volume of a managed driver holds a reference to it.
        r = d1.docker("plugin", "disable", PLUGIN, check=False)
        assert r.returncode != 0 and "in use" in r.stderr, r
        # With nothing mounted, forcing it is safe (the last Unmount committed and released the
        # volume); enabled again, the volume and its data are still there.
        d1.docker("plugin", "disable", "-f", PLUGIN)
        d1.docker("plugin", "enable", PLUGIN)
        out = d1.run("--rm", "-v", "pv:/data", dk.IMAGE, "cat", "/data/f", "/data/g").stdout.split()
        assert out == ["from-p1", "again"], out
    finally:
        for d in (d1, d2):
            if d is not None:
                d.docker("rm", "-f", *d.docker("ps", "-aq", check=False).stdout.split(), check=False)
                d.docker("plugin", "disable", "-f", PLUGIN, check=False)
                d.stop()
