"""Volume lifecycle through the agent: removing volumes (Docker's Remove, `ferry volume rm`):
the store really loses the volume, a re-created name starts empty, the
deletion resumes after the agent is killed mid-way, and a job whose host
died is finished by another host. Real FUSE mounts, a real control service,
file:// and S3 stores."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from fsd.store import open_store
from tests.agent.harness import TOKEN, RunningAgent, agent_config, control_client, start_control
from tests.helpers.mount import write_fsync

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


@pytest.fixture
async def control(nursery, tmp_path, run_dir):
    return await start_control(nursery, tmp_path, ttl=3.0, heartbeat=0.5)


def keys_of(store_url: str, name: str) -> list[str]:
    store = open_store(store_url)
    try:
        return sorted(store.list(name + "/")) + ([name] if store.head(name) is not None else [])
    finally:
        store.close()


async def wait_deleted(addr: str, timeout: float = 60.0) -> None:
    async with control_client(addr) as c:
        with trio.fail_after(timeout):
            while await c.removal_list():
                await trio.sleep(0.2)


async def fill(ra: RunningAgent, name: str, files: int = 3) -> Path:
    r = await ra.call("/VolumeDriver.Mount", {"Name": name, "ID": "c1"})
    assert r["Err"] == "", r
    mp = Path(r["Mountpoint"])
    for i in range(files):
        await trio.to_thread.run_sync(write_fsync, mp / f"f{i}", os.urandom(50_000 + i))
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": name, "ID": "c1"}))["Err"] == ""
    return mp


async def test_docker_remove_deletes_everything_and_a_new_volume_starts_empty(nursery, tmp_path, control,
                                                                              store_url, caplog):
    caplog.set_level(logging.INFO, logger="ferry.agent.removal")
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    await fill(ra, "demo")
    assert len(keys_of(store_url, "demo")) > 5
    assert (await ra.call("/VolumeDriver.Remove", {"Name": "demo"}))["Err"] == ""
    # Docker's answer came once the volume was fenced: the name is free at once
    assert (await ra.call("/VolumeDriver.List", {}))["Volumes"] == []
    await wait_deleted(control)
    assert keys_of(store_url, "demo") == []
    # One deletion: the job Docker's Remove started is the one the control
    # service then hands out by root, not a second one running beside it.
    await trio.sleep(1.0)
    starts = [r.getMessage() for r in caplog.records if "deleting the objects under" in r.getMessage()]
    assert len(starts) == 1, starts

    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "demo", "ID": "c2"})
    assert r["Err"] == ""
    assert await trio.to_thread.run_sync(os.listdir, r["Mountpoint"]) == []
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "demo", "ID": "c2"}))["Err"] == ""


async def test_name_reused_while_the_old_deletion_is_pending(nursery, tmp_path, control, file_store_url):
    """The control service's job for the old volume never runs (its host is
    dead); the new volume under the name starts empty all the same."""
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", file_store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    await fill(ra, "demo")
    await ra.stop()                              # deletion not run: the agent is gone
    async with control_client(control) as c:
        r = await c.volume_remove("demo", wait=0)
        assert r["host"] == "h1"
    await ra.start()                             # back: the watch hands it the job, fencing first
    async with control_client(control) as c:
        with trio.fail_after(20):
            while any(v["name"] == "demo" for v in await c.volume_list()):
                await trio.sleep(0.1)
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "demo", "ID": "c2"})
    assert r["Err"] == ""
    assert await trio.to_thread.run_sync(os.listdir, r["Mountpoint"]) == []
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "demo", "ID": "c2"}))["Err"] == ""
    await wait_deleted(control)
    assert len([k for k in keys_of(file_store_url, "demo") if "/incarnations/" in k]) == 1   # only the new one


def agent_process(tmp: Path, control: str, host: str, store_url: str, failpoints: str = "") -> subprocess.Popen:
    cfg = agent_config(tmp, control, host, store_url)
    env = {**os.environ, "FERRY_TOKEN": TOKEN, "FERRY_FAILPOINTS": failpoints}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "agent", "serve", "--control", control, "--host-id", host,
         "--store", store_url, "--cache-dir", str(cfg.cache_dir), "--socket", str(cfg.socket),
         "--mount-root", str(cfg.mount_root), "--state-dir", str(cfg.state_dir)],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{host}-agent.log", "ab"))


async def test_agent_killed_mid_deletion_resumes_and_cli_rm_waits(nursery, tmp_path, control, store_url):
    """`ferry volume rm` with no agent asking: a live agent gets the job from its
    watch; kill -9 between deletion phases; the restarted agent finishes it."""
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    await fill(ra, "demo", files=5)
    await ra.stop()
    proc = agent_process(tmp_path, control, "h1", store_url, "removal_between_deletions")
    try:
        env = {**os.environ, "FERRY_CONTROL": control, "FERRY_TOKEN": TOKEN}
        r = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "cli", "volume", "rm", "demo", "--timeout", "30"], env=env,
            capture_output=True, text=True, timeout=60))
        assert r.returncode == 0, r.stderr
        assert "removed: fenced in the store" in r.stdout
        assert await trio.to_thread.run_sync(proc.wait, 30) == -9      # killed by the failpoint mid-way
    finally:
        if proc.poll() is None:
            proc.kill()
    left = keys_of(store_url, "demo")
    assert left and any("/epochs/" in k for k in left)                # a part is deleted, not all
    async with control_client(control) as c:
        (job,) = await c.removal_list()
        assert job["name"] == "demo" and job["host"] == "h1"
    await ra.start()
    await wait_deleted(control)
    assert keys_of(store_url, "demo") == []


async def test_job_of_a_dead_host_is_finished_by_another(nursery, tmp_path, control, file_store_url):
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", file_store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    await fill(ra, "demo")
    async with control_client(control) as c:
        await c.host_register("ghost")
        await c.host_heartbeat("ghost")
        assert (await c.volume_remove("demo", host_id="ghost"))["host"] == "ghost"
        # ghost never fences it and stops heartbeating; h1's watch takes the job over after the TTL
        with trio.fail_after(30):
            while any(v["name"] == "demo" for v in await c.volume_list()):
                await trio.sleep(0.2)
    await wait_deleted(control)
    assert keys_of(file_store_url, "demo") == []


async def test_remove_refused_while_mounted_here_and_nothing_changes(nursery, tmp_path, control, file_store_url):
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", file_store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "demo", "ID": "c1"})
    await trio.to_thread.run_sync(write_fsync, Path(r["Mountpoint"]) / "keep", b"x" * 1000)
    r = await ra.call("/VolumeDriver.Remove", {"Name": "demo"})
    assert "in use on this host" in r["Err"]
    async with control_client(control) as c:
        with pytest.raises(Exception) as e:
            await c.volume_remove("demo")                # the CLI: a live host holds it
        assert "in use on host 'h1'" in str(e.value)
        assert [v["state"] for v in await c.volume_list()] == ["ready"]
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "demo", "ID": "c1"}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "demo", "ID": "c2"})
    assert (Path(r["Mountpoint"]) / "keep").read_bytes() == b"x" * 1000
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "demo", "ID": "c2"}))["Err"] == ""


async def test_volume_inspect_shows_the_owners_last_gc(nursery, tmp_path, control, file_store_url):
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", file_store_url))
    await ra.start()
    opts = {"gc_interval": "1s", "gc_grace": "0", "commit_interval": "0.2", "history": "0"}
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo", "Opts": opts}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "demo", "ID": "c1"})
    mp = Path(r["Mountpoint"])
    for _ in range(3):
        await trio.to_thread.run_sync(write_fsync, mp / "f", os.urandom(200_000))
    async with control_client(control) as c:
        with trio.fail_after(30):
            while True:
                gc = (await c.volume_get("demo"))["last_gc"]
                if gc and gc["objects"]:
                    break
                await trio.sleep(0.3)
    assert gc["freed_bytes"] >= 200_000 and gc["error"] is None
    env = {**os.environ, "FERRY_CONTROL": control, "FERRY_TOKEN": TOKEN}
    out = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "cli", "volume", "inspect", "demo"], env=env, capture_output=True, text=True))
    assert "last GC" in out.stdout and "freed" in out.stdout, out.stdout + out.stderr
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "demo", "ID": "c1"}))["Err"] == ""


async def test_snapshot_through_the_control_service(nursery, tmp_path, control, file_store_url):
    """`ferry snapshot create` runs on the host that has the volume mounted (which
    commits first), is recorded at the control service and shows in Docker's Get."""
    from fsd.backup import snapshots as fsnap
    from fsd.volume import objects as fvol
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", file_store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "demo", "ID": "c1"})
    mp = Path(r["Mountpoint"])
    await trio.to_thread.run_sync((mp / "f").write_bytes, b"not fsynced yet")
    env = {**os.environ, "FERRY_CONTROL": control, "FERRY_TOKEN": TOKEN}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", "snapshot", *args], env=env, capture_output=True,
                              text=True, timeout=120)
    out = await trio.to_thread.run_sync(cli, "create", "demo", "s1")
    assert out.returncode == 0 and "created by host h1" in out.stdout, out.stdout + out.stderr
    out = await trio.to_thread.run_sync(cli, "create", "demo", "s1")
    assert out.returncode == 1 and "already" in out.stderr
    out = await trio.to_thread.run_sync(cli, "ls", "demo")
    assert "s1" in out.stdout
    g = await ra.call("/VolumeDriver.Get", {"Name": "demo"})
    assert g["Volume"]["Status"]["snapshots"] == ["s1"]
    vols = (await ra.call("/VolumeDriver.List", {}))["Volumes"]
    assert [v["Status"]["snapshots"] for v in vols if v["Name"] == "demo"] == [["s1"]]

    def snap_content() -> bytes:
        store = open_store(file_store_url)
        try:
            ref, state = fsnap.open_state(store, "demo", "s1")
            algo = fvol.read_superblock(store, ref).content_hash
            return fsnap.read_file(store, ref.root, state, fsnap.lookup(state, "f"), algo)
        finally:
            store.close()
    assert await trio.to_thread.run_sync(snap_content) == b"not fsynced yet"
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "demo", "ID": "c1"}))["Err"] == ""
    out = await trio.to_thread.run_sync(cli, "create", "demo", "s2")          # unmounted: any live host
    assert out.returncode == 0, out.stderr
    out = await trio.to_thread.run_sync(cli, "rm", "demo", "s1")
    assert out.returncode == 0, out.stderr
    out = await trio.to_thread.run_sync(cli, "ls", "demo")
    assert "s1" not in out.stdout and "s2" in out.stdout
    out = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "cli", "volume", "inspect", "demo"], env=env, capture_output=True, text=True))
    assert "snapshots     s2" in out.stdout, out.stdout
    store = open_store(file_store_url)
    try:
        assert [i.name for i in fsnap.list_all(store, "demo")] == ["s2"]
    finally:
        store.close()


async def test_volume_export_import_and_clone_through_the_control_service(nursery, tmp_path, control, file_store_url):
    """`ferry volume export` of a mounted volume holds what was written before it
    (its host commits first); `ferry volume import` records the new volume only
    once it is complete; `ferry volume create --from` clones; Docker mounts both."""
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", file_store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "demo"}))["Err"] == ""
    mp = Path((await ra.call("/VolumeDriver.Mount", {"Name": "demo", "ID": "c1"}))["Mountpoint"])
    await trio.to_thread.run_sync((mp / "f").write_bytes, b"written, not fsynced")
    env = {**os.environ, "FERRY_CONTROL": control, "FERRY_TOKEN": TOKEN, "FERRY_STORE": file_store_url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", "volume", *args], env=env, capture_output=True,
                              text=True, timeout=120)
    tar = tmp_path / "demo.tar"
    out = await trio.to_thread.run_sync(cli, "export", "demo", "-o", str(tar))
    assert out.returncode == 0, out.stderr
    assert "export-" not in (await trio.to_thread.run_sync(cli, "inspect", "demo")).stdout   # temp snapshot gone
    out = await trio.to_thread.run_sync(cli, "import", "demo", str(tar))
    assert out.returncode == 1 and "already exists" in out.stderr
    out = await trio.to_thread.run_sync(cli, "import", "restored", str(tar))
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.tar"
    bad.write_bytes(tar.read_bytes()[:1500])
    out = await trio.to_thread.run_sync(cli, "import", "broken", str(bad))
    assert out.returncode == 1 and "nothing was created" in out.stderr, out.stderr
    assert "broken" not in (await trio.to_thread.run_sync(cli, "ls")).stdout
    await trio.to_thread.run_sync(write_fsync, mp / "g", b"later")
    out = await trio.to_thread.run_sync(cli, "create", "twin", "--from", "demo")        # as last committed
    assert out.returncode == 0 and "clone of demo" in out.stdout, out.stdout + out.stderr
    for name, files in (("restored", {"f": b"written, not fsynced"}),
                        ("twin", {"f": b"written, not fsynced", "g": b"later"})):
        r = await ra.call("/VolumeDriver.Mount", {"Name": name, "ID": "c2"})
        assert r["Err"] == "", r
        got = {p.name: p.read_bytes() for p in Path(r["Mountpoint"]).iterdir()}
        assert got == files, (name, got)
        assert (await ra.call("/VolumeDriver.Unmount", {"Name": name, "ID": "c2"}))["Err"] == ""
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "demo", "ID": "c1"}))["Err"] == ""


async def test_docker_remove_of_an_origin_keeps_what_its_clone_shares(nursery, tmp_path, control, file_store_url):
    """docker volume rm of a volume that was cloned: Docker's answer and the
    control service's job end as usual, the clone keeps reading every byte,
    and the origin's objects go with the clone."""
    ra = RunningAgent(nursery, agent_config(tmp_path, control, "h1", file_store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "orig"}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "orig", "ID": "c1"})
    mp = Path(r["Mountpoint"])
    data = os.urandom(3_000_000)
    await trio.to_thread.run_sync(write_fsync, mp / "f", data)
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "orig", "ID": "c1"}))["Err"] == ""
    assert (await ra.call("/VolumeDriver.Create", {"Name": "copy", "Opts": {"from": "orig"}}))["Err"] == ""
    assert (await ra.call("/VolumeDriver.Remove", {"Name": "orig"}))["Err"] == ""
    await wait_deleted(control)
    assert keys_of(file_store_url, "orig")                       # the shared part is still there
    r = await ra.call("/VolumeDriver.Mount", {"Name": "copy", "ID": "c2"})
    assert r["Err"] == "", r
    assert await trio.to_thread.run_sync((Path(r["Mountpoint"]) / "f").read_bytes) == data
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "copy", "ID": "c2"}))["Err"] == ""
    assert (await ra.call("/VolumeDriver.Remove", {"Name": "copy"}))["Err"] == ""
    await wait_deleted(control)
    assert keys_of(file_store_url, "orig") == [] and keys_of(file_store_url, "copy") == []
