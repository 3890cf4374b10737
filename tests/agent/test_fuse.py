"""The agent with real FUSE mounts, a real control service and a file:// store:
Mount/Unmount with data, mount-ID refcount, agent restart with adoption,
a killed fsd remounted, a volume moving between two hosts."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import pytest
import trio

from agent.fsd_proc import in_proc_mounts
from agent.volumes import Phase
from fsd.rundir import registry_path
from tests.agent.harness import RunningAgent, agent_config, control_client, start_control
from tests.helpers.mount import write_fsync

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


async def in_thread(fn, *a):
    return await trio.to_thread.run_sync(fn, *a)


def fsd_pid(mp: str) -> int:
    return json.loads(registry_path(Path(mp)).read_text())["pid"]


@pytest.fixture
async def control(nursery, tmp_path, run_dir):
    return await start_control(nursery, tmp_path)


async def test_mount_write_unmount_remount_and_refcount(nursery, tmp_path, control, store_url):
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "data"}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "data", "ID": "c1"})
    assert r["Err"] == "", r
    mp = r["Mountpoint"]
    assert mp == str(ra.cfg.mount_root / "data") and in_proc_mounts(Path(mp))
    payload = os.urandom(300_000)
    await in_thread(write_fsync, Path(mp) / "f.bin", payload)

    # a second container: same mountpoint, same daemon
    pid = fsd_pid(mp)
    r2 = await ra.call("/VolumeDriver.Mount", {"Name": "data", "ID": "c2"})
    assert r2 == {"Mountpoint": mp, "Err": ""}
    assert (await ra.call("/VolumeDriver.Mount", {"Name": "data", "ID": "c2"}))["Err"] == ""   # idempotent
    assert fsd_pid(mp) == pid
    assert (await ra.call("/VolumeDriver.Path", {"Name": "data"}))["Mountpoint"] == mp
    g = await ra.call("/VolumeDriver.Get", {"Name": "data"})
    st = g["Volume"]["Status"]
    assert g["Volume"]["Mountpoint"] == mp and st["owner"] == "h1" and st["epoch"] >= 2
    assert st["mounts_here"] == 2 and st["durability"] == "remote"
    r = await ra.call("/VolumeDriver.Remove", {"Name": "data"})
    assert "in use on this host" in r["Err"]

    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "data", "ID": "c1"}))["Err"] == ""
    assert in_proc_mounts(Path(mp))                       # c2 still uses it
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "data", "ID": "c2"}))["Err"] == ""
    assert not in_proc_mounts(Path(mp))
    status = json.loads((ra.cfg.cache_dir / "data" / "status.json").read_text())
    assert status["phase"] == "released"
    async with control_client(control) as c:
        assert (await c.volume_get("data"))["lease"] is None      # released at the control service

    r = await ra.call("/VolumeDriver.Mount", {"Name": "data", "ID": "c3"})
    assert r["Err"] == ""
    assert await in_thread((Path(mp) / "f.bin").read_bytes) == payload
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "data", "ID": "c3"}))["Err"] == ""
    assert (await ra.call("/VolumeDriver.Remove", {"Name": "data"}))["Err"] == ""


async def test_agent_restart_adopts_and_killed_fsd_is_remounted(nursery, tmp_path, control, file_store_url):
    cfg = agent_config(tmp_path, control, "h1", file_store_url)
    ra = RunningAgent(nursery, cfg)
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "db"}))["Err"] == ""
    mp = (await ra.call("/VolumeDriver.Mount", {"Name": "db", "ID": "c1"}))["Mountpoint"]
    await in_thread(write_fsync, Path(mp) / "a", b"before restart")
    pid = fsd_pid(mp)

    # agent dies (the daemon does not)
    await ra.stop()
    assert not cfg.socket.exists()          # the agent removed its socket on the way out
    await in_thread(write_fsync, Path(mp) / "b", b"while the agent is down")
    agent = await ra.start()
    rec = agent.volumes.get("db")
    assert rec.phase is Phase.SERVING and fsd_pid(mp) == pid and rec.ids == {"c1"}
    assert rec.epoch is not None
    assert await in_thread((Path(mp) / "b").read_bytes) == b"while the agent is down"
    assert (await ra.call("/VolumeDriver.Path", {"Name": "db"}))["Mountpoint"] == mp

    # the daemon dies: the agent detaches the dead mount and remounts
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(60):
        while True:
            await trio.sleep(0.2)
            try:
                if fsd_pid(mp) != pid and in_proc_mounts(Path(mp)):
                    ok = await in_thread(os.path.exists, Path(mp) / "a")
                    if ok:
                        break
            except (OSError, ValueError, KeyError):
                pass
    assert await in_thread((Path(mp) / "a").read_bytes) == b"before restart"
    assert await in_thread((Path(mp) / "b").read_bytes) == b"while the agent is down"
    assert agent.volumes.ids("db") == {"c1"}
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "db", "ID": "c1"}))["Err"] == ""
    assert not in_proc_mounts(Path(mp))


async def test_a_mount_waits_for_a_volume_in_use_elsewhere_to_be_released(nursery, tmp_path, control,
                                                                            file_store_url):
    """A Swarm task moved off a drained node mounts its volume before the old
    task has stopped: with `in_use_wait`, the Mount waits for the owner's
    release and succeeds; an owner that keeps using it is still refused,
    with the time waited and the Swarm advice."""
    addr = control
    ra = RunningAgent(nursery, dataclasses.replace(agent_config(tmp_path, addr, "h1", file_store_url),
                                                   in_use_wait=4.0))
    await ra.start()
    for vol in ("moving", "held"):
        assert await ra.call("/VolumeDriver.Create", {"Name": vol}) == {"Err": ""}
    async with control_client(addr) as other:
        await other.host_register("h2")
        for vol in ("moving", "held"):
            assert (await other.lease_acquire(vol, "h2"))["status"] == "granted"
        in_use = {"moving", "held"}

        async def alive_h2() -> None:
            while True:
                await other.host_heartbeat("h2", [{"name": v, "in_use": True, "epoch": 2, "upload_lag_s": 0.0}
                                                  for v in sorted(in_use)])
                await trio.sleep(0.3)

        async def old_task_stops() -> None:
            await trio.sleep(1.5)      # longer than a heartbeat period: the waiting volume is reported
            in_use.discard("moving")
            await other.lease_release("moving", "h2", 2)

        async with trio.open_nursery() as n:
            n.start_soon(alive_h2)
            async def reported_in_use(v: str) -> bool:
                return bool(((await other.volume_get(v)).get("lease") or {}).get("in_use"))

            with trio.fail_after(10):          # until a heartbeat has reported both in use
                while not (await reported_in_use("moving") and await reported_in_use("held")):
                    await trio.sleep(0.05)
            n.start_soon(old_task_stops)
            started = trio.current_time()
            r = await ra.call("/VolumeDriver.Mount", {"Name": "moving", "ID": "c1"})
            assert r["Err"] == "", r
            assert trio.current_time() - started >= 0.5, "the Mount did not wait for the release"
            # A heartbeat sent while the Mount waited was answered "lost" (the lease was h2's then);
            # acting on it now would stop the volume the container just got. Watch two heartbeats.
            await trio.sleep(2 * ra.cfg.heartbeat)
            assert ra.agent is not None and ra.agent.volumes.get("moving").phase is Phase.SERVING
            r = await ra.call("/VolumeDriver.Mount", {"Name": "held", "ID": "c2"})
            assert "in use on host h2" in r["Err"] and "still after waiting 4s" in r["Err"], r
            assert "--update-order stop-first" in r["Err"] and "{{.Task.Slot}}" in r["Err"], r
            n.cancel_scope.cancel()
        await other.lease_release("held", "h2", 2)
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "moving", "ID": "c1"}))["Err"] == ""


async def test_volume_moves_between_hosts(nursery, tmp_path, control, file_store_url):
    a = RunningAgent(nursery, agent_config(tmp_path, control, "ha", file_store_url))
    b = RunningAgent(nursery, agent_config(tmp_path, control, "hb", file_store_url))
    await a.start()
    await b.start()
    assert (await a.call("/VolumeDriver.Create", {"Name": "mv"}))["Err"] == ""
    assert (await b.call("/VolumeDriver.Create", {"Name": "mv"}))["Err"] == ""     # Swarm: every node
    mpa = (await a.call("/VolumeDriver.Mount", {"Name": "mv", "ID": "x"}))["Mountpoint"]
    await in_thread(write_fsync, Path(mpa) / "f", b"from a")
    await trio.sleep(1.5)      # a heartbeat reports it in use
    r = await b.call("/VolumeDriver.Mount", {"Name": "mv", "ID": "y"})
    assert "in use on host ha" in r["Err"]
    assert (await a.call("/VolumeDriver.Unmount", {"Name": "mv", "ID": "x"}))["Err"] == ""
    r = await b.call("/VolumeDriver.Mount", {"Name": "mv", "ID": "y"})
    assert r["Err"] == "", r
    assert await in_thread((Path(r["Mountpoint"]) / "f").read_bytes) == b"from a"
    assert (await b.call("/VolumeDriver.Unmount", {"Name": "mv", "ID": "y"}))["Err"] == ""


async def test_planned_move_released_by_idle_owner_and_refused_when_in_use(nursery, tmp_path, control,
                                                                          file_store_url):
    a = RunningAgent(nursery, agent_config(tmp_path, control, "ha", file_store_url))
    b = RunningAgent(nursery, agent_config(tmp_path, control, "hb", file_store_url))
    agent_a = await a.start()
    await b.start()
    assert (await a.call("/VolumeDriver.Create", {"Name": "idle"}))["Err"] == ""
    assert (await a.call("/VolumeDriver.Create", {"Name": "busy"}))["Err"] == ""
    # ha holds the lease of "idle" but no container uses it there
    async with control_client(control) as c:
        assert (await c.lease_acquire("idle", "ha"))["status"] == "granted"
    with trio.fail_after(30):
        r = await b.call("/VolumeDriver.Mount", {"Name": "idle", "ID": "y"})
    assert r["Err"] == "", r                  # ha saw the move request (watch) and released
    async with control_client(control) as c:
        assert (await c.volume_get("idle"))["lease"]["host"] == "hb"
    assert (await b.call("/VolumeDriver.Unmount", {"Name": "idle", "ID": "y"}))["Err"] == ""

    # in use on ha: a move request is refused and ha keeps serving it
    mp = (await a.call("/VolumeDriver.Mount", {"Name": "busy", "ID": "x"}))["Mountpoint"]
    await agent_a._handle_move("busy", "hb")
    async with control_client(control) as c:
        lease = (await c.volume_get("busy"))["lease"]
        assert lease["host"] == "ha" and lease["in_use"] is True
    assert in_proc_mounts(Path(mp))
    assert (await a.call("/VolumeDriver.Unmount", {"Name": "busy", "ID": "x"}))["Err"] == ""


async def test_fsd_dead_at_unmount_is_resealed_so_another_host_mounts(nursery, tmp_path, control,
                                                                      file_store_url):
    cfg_a = agent_config(tmp_path, control, "ha", file_store_url)
    cfg_a.monitor_interval = 3600          # the Unmount, not the monitor, meets the dead daemon
    a = RunningAgent(nursery, cfg_a)
    b = RunningAgent(nursery, agent_config(tmp_path, control, "hb", file_store_url))
    agent_a = await a.start()
    await b.start()
    assert (await a.call("/VolumeDriver.Create", {"Name": "crash"}))["Err"] == ""
    mp = (await a.call("/VolumeDriver.Mount", {"Name": "crash", "ID": "x"}))["Mountpoint"]
    await in_thread(write_fsync, Path(mp) / "acked", b"fsync-acknowledged")
    pid = fsd_pid(mp)
    os.kill(pid, signal.SIGKILL)
    await trio.sleep(0.3)
    assert (await a.call("/VolumeDriver.Unmount", {"Name": "crash", "ID": "x"}))["Err"] == ""
    assert not in_proc_mounts(Path(mp)) and not agent_a.volumes.get("crash").has_daemon
    r = await b.call("/VolumeDriver.Mount", {"Name": "crash", "ID": "y"})   # no takeover needed
    assert r["Err"] == "", r
    assert await in_thread((Path(r["Mountpoint"]) / "acked").read_bytes) == b"fsync-acknowledged"
    assert (await b.call("/VolumeDriver.Unmount", {"Name": "crash", "ID": "y"}))["Err"] == ""


async def test_a_managed_plugin_whose_mounts_no_longer_reach_the_host(nursery, tmp_path, control, file_store_url):
    """What dockerd --live-restore does to a managed plugin on restart, without Docker: the host
    unmounts everything under the plugin's mount root (the marker and the volume's mount here);
    the container keeps its own copy of the mount (a bind mount here). The agent must refuse new
    Mounts (they would not reach the host), leave the daemon serving the container, stop it cleanly
    at the container's Unmount, and then end itself so that dockerd restarts the plugin."""
    cfg = dataclasses.replace(agent_config(tmp_path, control, "h1", file_store_url), managed_plugin=True)
    ra = RunningAgent(nursery, cfg)
    agent = await ra.start()
    marker = cfg.mount_root / ".ferry-host-link"
    assert in_proc_mounts(marker)
    assert (await ra.call("/VolumeDriver.Create", {"Name": "db"}))["Err"] == ""
    mp = (await ra.call("/VolumeDriver.Mount", {"Name": "db", "ID": "c1"}))["Mountpoint"]
    pid = fsd_pid(mp)
    container = tmp_path / "container-view"
    container.mkdir()
    await trio.run_process(["mount", "--bind", mp, str(container)])
    try:
        await in_thread(write_fsync, container / "a", b"before the teardown")
        for path in (marker, Path(mp)):            # dockerd's teardown, deepest first, lazily
            await trio.run_process(["umount", "-l", str(path)])

        reply = await ra.call("/VolumeDriver.Mount", {"Name": "db", "ID": "c2"})
        assert "no longer reach this host" in reply["Err"], reply
        assert (await ra.call("/VolumeDriver.Create", {"Name": "other"}))["Err"] == ""
        reply = await ra.call("/VolumeDriver.Mount", {"Name": "other", "ID": "c3"})
        assert "no longer reach this host" in reply["Err"], reply
        # three monitor passes later the daemon still serves the container (no remount killed it)
        seen = agent.monitor_rounds
        with trio.fail_after(30):
            while agent.monitor_rounds < seen + 3:
                await trio.sleep(0.05)
        await in_thread(write_fsync, container / "b", b"after the teardown")
        assert fsd_pid(mp) == pid and agent.volumes.ids("db") == {"c1"}
        assert agent.volumes.get("db").phase is Phase.SERVING     # no remount was tried
        assert agent.exit_reason is None
    finally:
        await trio.run_process(["umount", "-l", str(container)], check=False)   # the container is gone
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "db", "ID": "c1"}))["Err"] == ""
    with trio.fail_after(30):
        await ra.stopped.wait()                   # ended itself: dockerd would restart the plugin
    assert agent.exit_reason and "no ferry volume is in use" in agent.exit_reason
    # the volume was committed and released: another host mounts it with both writes
    rb = RunningAgent(nursery, agent_config(tmp_path, control, "h2", file_store_url))
    await rb.start()
    mp2 = (await rb.call("/VolumeDriver.Mount", {"Name": "db", "ID": "d1"}))["Mountpoint"]
    assert await in_thread((Path(mp2) / "a").read_bytes) == b"before the teardown"
    assert await in_thread((Path(mp2) / "b").read_bytes) == b"after the teardown"
    assert (await rb.call("/VolumeDriver.Unmount", {"Name": "db", "ID": "d1"}))["Err"] == ""
