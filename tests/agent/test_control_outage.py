"""The data plane does not depend on the control plane (issue 19, item 4).

A real agent with a real FUSE mount, a control service on a real etcd, and
the file:// store. etcd is killed for a while under an fsync loop: every
fsync keeps succeeding (durability=remote: the data reaches the store, which
the control plane never touches), and a Mount asked during the outage waits
and finishes once etcd is back. Afterwards the store holds every
acknowledged write. The outage lasts FERRY_OUTAGE_S seconds (20 by default;
the issue's 60 s with the slow marker).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from control.etcd_client import EtcdOptions
from control.etcd_state import EtcdState
from control.leases import Config
from control.server import ControlServer
from tests.agent.harness import TOKEN, RunningAgent, agent_config
from tests.helpers.etcd import EtcdCluster, etcd_binary
from tests.helpers.fsync_writer import acked_model

pytestmark = [pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
              pytest.mark.skipif(etcd_binary() is None, reason="etcd-server is not installed")]


async def _run(nursery, tmp_path, store_url, new_mount, outage: float) -> None:
    etcd = EtcdCluster(tmp_path / "etcd", members=1)
    etcd.start()
    writer = None
    try:
        state = EtcdState(etcd.endpoints, options=EtcdOptions(timeout=3.0))
        server = ControlServer(state, TOKEN, Config(ttl=4.0, heartbeat=1.0))
        port = await nursery.start(server.serve, "127.0.0.1", 0)
        cfg = agent_config(tmp_path, f"127.0.0.1:{port}", "h1", store_url)
        cfg.control_wait = outage + 60
        ra = RunningAgent(nursery, cfg)
        await ra.start()
        for name in ("v", "w"):
            assert (await ra.call("/VolumeDriver.Create", {"Name": name}))["Err"] == ""
        r = await ra.call("/VolumeDriver.Mount", {"Name": "v", "ID": "c1"})
        assert r["Err"] == "", r
        log = tmp_path / "writer.log"
        with open(tmp_path / "writer.err", "wb") as err:   # the child has its own copy of the descriptor
            writer = subprocess.Popen([sys.executable, "-m", "tests.helpers.fsync_writer", r["Mountpoint"], str(log),
                                       "7"], cwd=Path(__file__).parents[2], stderr=err)

        async def acks() -> int:
            return acked_model(log).acks if log.exists() else 0

        with trio.fail_after(30):
            while await acks() < 10:
                await trio.sleep(0.05)
        await trio.to_thread.run_sync(etcd.kill, 0)
        before = await acks()
        mount_w: dict = {}

        async def mount_during_outage() -> None:
            mount_w["r"] = await ra.call("/VolumeDriver.Mount", {"Name": "w", "ID": "c2"}, timeout=outage + 90)
            mount_w["at"] = trio.current_time()
        nursery.start_soon(mount_during_outage)
        await trio.sleep(outage)                 # the outage itself: etcd stays down this long
        during = await acks() - before
        assert writer.poll() is None, (tmp_path / "writer.err").read_text()
        assert during > 0, "no fsync completed while etcd was down"
        assert "r" not in mount_w, f"a Mount finished while etcd was down: {mount_w}"
        back = trio.current_time()
        await trio.to_thread.run_sync(etcd.start, 0)
        with trio.fail_after(60):
            while "r" not in mount_w:
                await trio.sleep(0.1)
        assert mount_w["r"]["Err"] == "", mount_w
        assert mount_w["at"] >= back
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert (await ra.call("/VolumeDriver.Unmount", {"Name": "v", "ID": "c1"}))["Err"] == ""
        model = acked_model(log)
        m = new_mount("check")
        m.mount(store_url, "v")
        problems = model.check(m.mountpoint)
        m.umount()
        assert not problems, problems[:5]
        assert model.acks > before + during - 1
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        etcd.stop()


async def test_fsync_goes_on_and_mounts_wait_while_etcd_is_down(nursery, tmp_path, run_dir, file_store_url,
                                                                 new_mount):
    await _run(nursery, tmp_path, file_store_url, new_mount, float(os.environ.get("FERRY_OUTAGE_S", "20")))


@pytest.mark.slow
async def test_fsync_goes_on_and_mounts_wait_while_etcd_is_down_for_a_minute(nursery, tmp_path, run_dir,
                                                                             file_store_url, new_mount):
    await _run(nursery, tmp_path, file_store_url, new_mount, 60.0)
