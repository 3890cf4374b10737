"""Disaster recovery of the control plane (issue 19, item 5), end to end.

A cluster with volumes (one with mount options), a snapshot, a clone and a
deletion in progress; its control state is wiped (a new SQLite file, as if
the control host's disk died). Before recovery, `docker volume create` of a
name the store holds is refused with a message naming the command; after
`ferry control recover --store`, every volume is back with its options and
snapshots, a container (a plugin Mount, exactly what dockerd sends) reads
its data, the deletion is finished by the agent, and a second recover
changes nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from control.leases import Config
from control.server import ControlServer
from control.sqlite_state import SqliteState
from fsd.format import control_record
from fsd.lifecycle import removal
from fsd.store import open_store
from fsd.volume import objects as vol_mod
from tests.agent.harness import TOKEN, RunningAgent, agent_config, control_client
from tests.helpers.mount import write_fsync

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


class Control:
    """An in-process control service that can lose its state."""

    def __init__(self, nursery: trio.Nursery, tmp: Path):
        self.nursery = nursery
        self.tmp = tmp
        self.port = 0
        self.scope: trio.CancelScope | None = None
        self.state: SqliteState | None = None

    async def start(self, db: str) -> str:
        self.state = SqliteState(self.tmp / db)
        server = ControlServer(self.state, TOKEN, Config(ttl=3.0, heartbeat=0.5))
        self.scope = trio.CancelScope()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            assert self.scope is not None
            with self.scope:
                await server.serve("127.0.0.1", self.port, task_status=task_status)
        self.port = await self.nursery.start(run)
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        assert self.scope is not None and self.state is not None
        self.scope.cancel()
        await trio.sleep(0)
        await self.state.aclose()


def recover(addr: str, store_url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "control", "recover", "--store", store_url,
                           "--control", addr, *extra], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FERRY_TOKEN": TOKEN}, cwd=Path(__file__).parents[2])


async def test_control_state_rebuilt_from_the_store(nursery, tmp_path, run_dir, file_store_url):
    ctl = Control(nursery, tmp_path)
    addr = await ctl.start("control.db")
    ra = RunningAgent(nursery, agent_config(tmp_path, addr, "h1", file_store_url))
    await ra.start()
    assert (await ra.call("/VolumeDriver.Create", {"Name": "pg", "Opts": {"durability": "local"}}))["Err"] == ""
    assert (await ra.call("/VolumeDriver.Create", {"Name": "blk", "Opts": {"layout": "block", "size": "128M"}})
            )["Err"] == ""
    store = open_store(file_store_url)
    try:                                           # formatting recorded every option beside the volume
        ref = vol_mod.live_volume(store, "pg")
        assert control_record.decode(store.get(control_record.key(ref.root))) == {"durability": "local"}
    finally:
        store.close()
    r = await ra.call("/VolumeDriver.Mount", {"Name": "pg", "ID": "c1"})
    assert r["Err"] == "", r
    payload = os.urandom(200_000)
    await trio.to_thread.run_sync(write_fsync, Path(r["Mountpoint"]) / "table", payload)
    async with control_client(addr) as c:
        await c.snapshot_create("pg", "nightly", wait=60)
        await c.volume_create("pgtest", {"from": "pg@nightly"}, wait=60)
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "pg", "ID": "c1"}))["Err"] == ""
    async with control_client(addr) as c:
        before = {v["name"]: (v["options"], sorted(v["snapshots"])) for v in await c.volume_list()}
    assert set(before) == {"pg", "blk", "pgtest"}
    store = open_store(file_store_url)
    try:                                           # a deletion that was under way when control died
        await trio.to_thread.run_sync(lambda: vol_mod.mkfs(store, "old", {}))
        await trio.to_thread.run_sync(lambda: removal.begin_removal(store, "old"))
        assert any(True for _ in store.list("old/"))
    finally:
        store.close()

    # The control host's disk is gone: a new, empty state.
    await ctl.stop()
    addr2 = await ctl.start("control-new.db")
    assert addr2 == addr
    r = await ra.call("/VolumeDriver.Create", {"Name": "pg"})
    assert "ferry control recover" in r["Err"] and "exists in the store" in r["Err"], r

    dry = await trio.to_thread.run_sync(lambda: recover(addr, file_store_url, "--dry-run"))
    assert dry.returncode == 0 and "would be recovered: volume pg" in dry.stdout, dry.stdout + dry.stderr
    async with control_client(addr) as c:
        assert await c.volume_list() == []                  # a dry run changes nothing

    done = await trio.to_thread.run_sync(lambda: recover(addr, file_store_url))
    assert done.returncode == 0, done.stdout + done.stderr
    async with control_client(addr) as c:
        after = {v["name"]: (v["options"], sorted(v["snapshots"])) for v in await c.volume_list()}
    assert after == before, (after, before)

    # a container reads its data
    r = await ra.call("/VolumeDriver.Mount", {"Name": "pg", "ID": "c2"})
    assert r["Err"] == "", r
    assert (Path(r["Mountpoint"]) / "table").read_bytes() == payload
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "pg", "ID": "c2"}))["Err"] == ""
    r = await ra.call("/VolumeDriver.Mount", {"Name": "pgtest", "ID": "c3"})
    assert r["Err"] == "", r
    assert (Path(r["Mountpoint"]) / "table").read_bytes() == payload
    assert (await ra.call("/VolumeDriver.Unmount", {"Name": "pgtest", "ID": "c3"}))["Err"] == ""

    # the deletion in progress is finished by the agent
    assert "recovered: deletion of old/" in done.stdout, done.stdout
    with trio.fail_after(60):
        while True:
            async with control_client(addr) as c:
                if not await c.removal_list():
                    break
            await trio.sleep(0.2)
    store = open_store(file_store_url)
    try:
        assert not any(True for _ in store.list("old/")), "the recovered deletion left objects behind"
    finally:
        store.close()

    again = await trio.to_thread.run_sync(lambda: recover(addr, file_store_url))
    assert again.returncode == 0 and "recovered" not in again.stdout.replace("0 recovered", ""), again.stdout
    assert "unchanged" in again.stdout
    async with control_client(addr) as c:
        assert {v["name"]: (v["options"], sorted(v["snapshots"])) for v in await c.volume_list()} == before
