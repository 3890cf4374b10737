"""ferry as a Docker managed plugin (issue 23): built from this checkout by
scripts/build-plugin.sh, created and enabled on real dockerds of simulated
hosts that run no host agent, then used as Docker users do."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import dockerd as dk
from tests.cluster.conftest import TOKEN
from tests.cluster.netns import SimHost
from tests.cluster.swarm import FSYNC_LOOP, AckLog, Swarm, assert_every_ack_is_in, check_moved, start_fsync_service

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


def plugin_host(cluster, name: str, plugin_dir: Path, dockerd_args: tuple[str, ...] = (), *,
                slave_data_root: bool = False) -> dk.Dockerd:
    """A simulated host with a dockerd and the plugin enabled in it (no host agent)."""
    host = SimHost(cluster.bridge, len(cluster.hosts), name, cluster.dir)
    cluster.hosts.append(host)
    host.private_tmpfs("/run/docker/plugins")
    d = dk.Dockerd(host, dockerd_args, slave_data_root=slave_data_root)
    install(d, cluster, plugin_dir)
    return d


def install(d: dk.Dockerd, cluster, plugin_dir: Path) -> None:
    """docker plugin create + set + enable, with the cache on a host directory of this host's own."""
    d.docker("plugin", "create", PLUGIN, str(plugin_dir), timeout=600)
    cache = d.host.dir / "plugin-cache"
    cache.mkdir(exist_ok=True)
    settings = {"CONTROL": cluster.control_addr, "TOKEN": TOKEN, "STORE": cluster.store_url,
                "HOST_ID": d.host.name, "CACHE_DIR.source": str(cache),
                "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}
    d.docker("plugin", "set", PLUGIN, *(f"{k}={v}" for k, v in settings.items()))
    d.docker("plugin", "enable", PLUGIN)


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
        _cleanup(d1, d2)


def _cleanup(*daemons: dk.Dockerd | None) -> None:
    for d in daemons:
        if d is not None:
            d.docker("rm", "-f", *d.docker("ps", "-aq", check=False).stdout.split(), check=False)
            d.docker("plugin", "disable", "-f", PLUGIN, check=False)
            d.stop()


def _fsync_loop(d: dk.Dockerd, volume: str, acks: AckLog, *extra: str) -> None:
    """The Swarm tests' fsync loop in a plain container named `loop`; returns once it acknowledged 20 lines."""
    d.run("-d", "--name", "loop", *extra, "-v", f"{volume}:/data", "-v", f"{acks.dir}:/ack", dk.IMAGE,
          "sh", "-c", FSYNC_LOOP)
    acks.wait_for(lambda: len(acks.lines()) >= 20, "the loop acknowledges 20 lines")


def _wait_for_new_writer(acks: AckLog, writers: int, when: str) -> None:
    """Until a container started after the first `writers` acknowledged 10 lines of its own."""
    def ten_new() -> bool:
        names = acks.writers()
        return len(names) > writers and sum(1 for ln in acks.lines() if ln.split()[0] == names[-1]) >= 10
    acks.wait_for(ten_new, f"the restarted container acknowledges 10 lines {when}")


def _stray_files(d: dk.Dockerd) -> list[str]:
    """Files under the plugin's propagated-mount directory on the host's own disk: what a container
    wrote when Docker handed it that directory instead of the volume's mount (seen once the mounts
    are gone)."""
    plugins = d.dir / "data" / "plugins"
    return sorted(str(f) for f in plugins.glob("*/propagated-mount/*/*") if f.is_file())


def _restart_under_a_running_container(cluster, plugin_dir, durability: str, kill: bool) -> None:
    d = plugin_host(cluster, "p1", plugin_dir)
    try:
        d.docker("volume", "create", "-d", PLUGIN, "-o", f"durability={durability}", "rv")
        acks = AckLog(cluster.dir / f"acks-restart-{durability}")
        _fsync_loop(d, "rv", acks, "--restart", "always")
        writers = len(acks.writers())
        d.restart(kill=kill)
        _wait_for_new_writer(acks, writers, f"after dockerd's {'kill -9' if kill else 'restart'}")
        assert_every_ack_is_in(acks.lines(), d.docker("exec", "loop", "cat", "/data/log").stdout)
    finally:
        _cleanup(d)
    assert not _stray_files(d), f"a container wrote to the host's disk, not the volume: {_stray_files(d)}"


@pytest.mark.parametrize("durability", ["local", "remote"])
def test_a_dockerd_restart_under_a_running_container_loses_no_acknowledged_write(cluster, plugin_dir, durability):
    """Docker's default (no live-restore): a restart stops the container (its Unmount commits and
    releases the volume), then the plugin; the next dockerd enables the plugin, then restarts the
    container by its policy, which finds every line it acknowledged."""
    _restart_under_a_running_container(cluster, plugin_dir, durability, kill=False)


@pytest.mark.slow           # about 50 s; run it with --run-slow before touching the plugin
@pytest.mark.xfail(strict=False, reason="known hazard, issue 23: after a kill -9 of dockerd, its restore stops and "
                                        "restarts the plugin, and in some runs the new plugin's mounts never reach "
                                        "the host: the restarted container got an empty host directory")
def test_a_dockerd_kill9_under_a_running_container_loses_no_acknowledged_write(cluster, plugin_dir):
    """kill -9 of dockerd leaves the container and the plugin to the next dockerd, which kills the
    container, restarts the plugin (the agent remounts the volume) and restarts the container."""
    _restart_under_a_running_container(cluster, plugin_dir, "remote", kill=True)


# The shared root (dockerd's default) only shows the guard's harmless false alarm: slow.
@pytest.mark.parametrize("root", [pytest.param("shared", marks=pytest.mark.slow), "slave"])
def test_dockerd_restarts_under_live_restore_never_hand_out_an_empty_directory(cluster, plugin_dir, root):
    """dockerd --live-restore leaves the plugin running through a restart. With a container
    running, dockerd keeps every mount: the container keeps writing and a new one mounts the
    volume. With none running, dockerd unmounts the plugin's propagated mount on the host and does
    not set it up again (moby's daemon.Shutdown, then the plugin manager's). Where dockerd's data
    root is a shared mount (its default) the plugin's mounts still reach the host through it;
    where it is a slave they no longer do, and a container would get an empty directory of the
    host. Either way the agent sees its marker go, refuses mounts meanwhile and ends itself;
    dockerd restarts the plugin with its propagated mount, and the volume holds every
    acknowledged line."""
    d = plugin_host(cluster, "p1", plugin_dir, ("--live-restore",), slave_data_root=root == "slave")
    try:
        d.docker("volume", "create", "-d", PLUGIN, "-o", "durability=local", "lv")
        acks = AckLog(cluster.dir / "acks-live")
        _fsync_loop(d, "lv", acks)
        d.restart()
        count = len(acks.lines())
        acks.wait_for(lambda: len(acks.lines()) >= count + 20, "the live-restored container keeps acknowledging")
        assert len(acks.writers()) == 1, "the container restarted: live-restore did not apply"
        assert d.run("--rm", "-v", "lv:/data", dk.IMAGE, "cat", "/data/log").stdout.count("\n") >= count
        d.docker("stop", "loop")
        d.restart()                                   # nothing runs now: the full teardown
        deadline = time.monotonic() + 90
        while True:
            r = d.run("--rm", "-v", "lv:/data", dk.IMAGE, "cat", "/data/log", check=False)
            if r.returncode == 0:
                break
            # until the plugin is back: refused with the reason (or the plugin is restarting),
            # never an empty directory ("No such file")
            assert "No such file" not in r.stderr, f"a mount handed out an empty directory: {r}"
            assert time.monotonic() < deadline, f"mounts still fail 90 s after the restart: {r}"
            time.sleep(0.5)
        assert_every_ack_is_in(acks.lines(), r.stdout)
    finally:
        _cleanup(d)
    assert not _stray_files(d), f"a container wrote to the host's disk, not the volume: {_stray_files(d)}"


def test_the_plugin_forced_off_and_replaced_under_a_running_container_loses_no_acknowledged_write(
        cluster, plugin_dir):
    """An upgrade done wrong: the plugin forced off under a container writing to a durability=local
    volume, removed, and created again from the build (what an upgrade with no registry is). The
    container's mount ends, but the local journal is under CACHE_DIR on the host, so the next mount
    finds every line the container acknowledged."""
    d = plugin_host(cluster, "p1", plugin_dir)
    try:
        d.docker("volume", "create", "-d", PLUGIN, "-o", "durability=local", "uv")
        acks = AckLog(cluster.dir / "acks-replace")
        _fsync_loop(d, "uv", acks)
        r = d.docker("plugin", "disable", PLUGIN, check=False)
        assert r.returncode != 0 and "in use" in r.stderr, r
        d.docker("plugin", "disable", "-f", PLUGIN)
        d.docker("rm", "-f", "loop")
        d.docker("plugin", "rm", "-f", PLUGIN)
        install(d, cluster, plugin_dir)
        out = d.run("--rm", "-v", "uv:/data", dk.IMAGE, "cat", "/data/log").stdout
        assert_every_ack_is_in(acks.lines(), out)
    finally:
        _cleanup(d)


def test_a_block_volume_through_the_plugin(cluster, plugin_dir):
    """layout=block inside the plugin: a loop device over ferry's image file, a kernel filesystem
    on it, mounted under the propagated mount; the data is there after the stack is taken down."""
    d = plugin_host(cluster, "p1", plugin_dir)
    try:
        d.docker("volume", "create", "-d", PLUGIN, "-o", "layout=block", "-o", "size=256M", "bv")
        d.run("--rm", "-v", "bv:/data", dk.IMAGE, "sh", "-c",
              "echo block > /data/f && dd if=/dev/zero of=/data/blob bs=65536 count=64 conv=fsync 2>/dev/null")
        out = d.run("--rm", "-v", "bv:/data", dk.IMAGE, "sh", "-c",
                    "cat /data/f; wc -c < /data/blob; cat /proc/self/mounts").stdout.splitlines()
        assert out[:2] == ["block", "4194304"], out
        fstype = [ln.split()[2] for ln in out[2:] if ln.split()[1:2] == ["/data"]]
        assert fstype and not fstype[0].startswith("fuse"), f"/data is not a kernel filesystem: {out}"
    finally:
        _cleanup(d)


def test_a_swarm_service_on_the_managed_plugin_moves_on_drain(cluster, plugin_dir, tmp_path):
    """Two nodes with the plugin enabled and no host agent: dockerd reports an enabled managed
    plugin to Swarm by itself, the task runs, and a drain moves it with every acknowledged line."""
    swarm = Swarm(cluster)
    try:
        for name in ("p1", "p2"):
            swarm.join(name, plugin_host(cluster, name, plugin_dir))
        acks = AckLog(tmp_path / "acks")
        old = start_fsync_service(swarm, "db", f"type=volume,source=swv,target=/data,volume-driver={PLUGIN}",
                                  acks, "--stop-grace-period", "5s")
        swarm.manager.docker("node", "update", "--availability", "drain", swarm.ids[old])
        gap = acks.handover(swarm=swarm)
        print(f"drain with the managed plugin: {gap:.2f} s from the old task's last acknowledged fsync "
              "to the new task's first")
        check_moved(swarm, "db", acks)
    finally:
        for d in reversed(list(swarm.nodes.values())):
            d.docker("swarm", "leave", "--force", check=False, timeout=60)
        _cleanup(*swarm.nodes.values())
