"""Encrypted volumes through Docker's plugin protocol (docs/encryption.md): an
agent with the key directory creates, mounts and moves one; its objects in
the store hold no plaintext; an agent without the key refuses to mount it
with a message naming the key; removal deletes everything, key or not."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import trio

from fsd.store.filestore import FileStore
from tests.agent.harness import RunningAgent, agent_config, start_control
from tests.helpers.mount import write_fsync

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")
PATTERN = b"AGENT-PLAINTEXT-" + os.urandom(8).hex().encode()


async def test_create_mount_move_and_remove_an_encrypted_volume(nursery, tmp_path, run_dir):
    control = await start_control(nursery, tmp_path, ttl=3.0, heartbeat=0.5)
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    url = f"file://{store_dir}"
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "prod.key").write_bytes(os.urandom(32))
    (keys / "prod.key").chmod(0o600)
    h1 = RunningAgent(nursery, dataclasses.replace(agent_config(tmp_path, control, "h1", url), key_dir=keys))
    h2 = RunningAgent(nursery, dataclasses.replace(agent_config(tmp_path, control, "h2", url), key_dir=keys))
    h3 = RunningAgent(nursery, agent_config(tmp_path, control, "h3", url))        # no keys
    for a in (h1, h2, h3):
        await a.start()

    r = await h1.call("/VolumeDriver.Create", {"Name": "db", "Opts": {"encryption": "aes-256-gcm", "key": "prod"}})
    assert r["Err"] == "", r
    r = await h1.call("/VolumeDriver.Mount", {"Name": "db", "ID": "c1"})
    assert r["Err"] == "", r
    await trio.to_thread.run_sync(write_fsync, Path(r["Mountpoint"]) / "table", PATTERN * 10_000)
    assert (await h1.call("/VolumeDriver.Unmount", {"Name": "db", "ID": "c1"}))["Err"] == ""

    r = await h2.call("/VolumeDriver.Mount", {"Name": "db", "ID": "c2"})          # moved to h2
    assert r["Err"] == "", r
    assert (Path(r["Mountpoint"]) / "table").read_bytes() == PATTERN * 10_000
    assert (await h2.call("/VolumeDriver.Unmount", {"Name": "db", "ID": "c2"}))["Err"] == ""

    store = FileStore(store_dir)
    bodies = {k: store.get(k) for k in store.list("db/")}
    assert bodies and not [k for k, b in bodies.items() if PATTERN in b or b"table" in b]

    r = await h3.call("/VolumeDriver.Mount", {"Name": "db", "ID": "c3"})
    assert "encrypted" in r["Err"] and "prod" in r["Err"], r

    assert (await h1.call("/VolumeDriver.Remove", {"Name": "db"}))["Err"] == ""
    with trio.fail_after(60):
        while list(store.list("db/")):
            await trio.sleep(0.2)
