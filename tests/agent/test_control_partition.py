"""An agent cut off from every control replica but not from the store, while
its volume is taken over elsewhere (issue 19): its next fsync fails, and the
new owner never sees what it wrote after the takeover. Storage fencing
alone makes a double writer impossible, whatever control says or cannot say.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

from tests.agent.harness import RunningAgent, agent_config, start_control
from tests.helpers.mount import write_fsync
from tests.helpers.tcpproxy import TcpProxy

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")


async def test_a_partitioned_owner_is_fenced_by_the_store(nursery, tmp_path, run_dir, store_url):
    addr = await start_control(nursery, tmp_path, ttl=3.0, heartbeat=0.5)
    host, port = addr.split(":")
    proxy = TcpProxy(host, int(port))                      # host A reaches control only through this
    try:
        a = RunningAgent(nursery, agent_config(tmp_path, f"127.0.0.1:{proxy.port}", "a", store_url))
        b = RunningAgent(nursery, agent_config(tmp_path, addr, "b", store_url))
        await a.start()
        await b.start()
        assert (await a.call("/VolumeDriver.Create", {"Name": "v"}))["Err"] == ""
        r = await a.call("/VolumeDriver.Mount", {"Name": "v", "ID": "ca"})
        assert r["Err"] == "", r
        mp_a = Path(r["Mountpoint"])
        await trio.to_thread.run_sync(write_fsync, mp_a / "before", b"acknowledged before the partition")

        proxy.cut()                                        # A loses every control replica, keeps the store
        with trio.fail_after(30):                          # B's Mount waits for A's lease, then takes over
            r = await b.call("/VolumeDriver.Mount", {"Name": "v", "ID": "cb"}, timeout=30)
        assert r["Err"] == "", r
        mp_b = Path(r["Mountpoint"])

        def a_writes_after() -> OSError | None:
            try:
                write_fsync(mp_a / "after", b"written by the fenced owner")
            except OSError as e:
                return e
            return None
        err = await trio.to_thread.run_sync(a_writes_after)
        assert err is not None and err.errno in (errno.EIO, errno.EROFS), err
        assert (mp_b / "before").read_bytes() == b"acknowledged before the partition"
        assert not (mp_b / "after").exists()
        await trio.to_thread.run_sync(write_fsync, mp_b / "b-writes", b"the new owner writes on")
        assert (await b.call("/VolumeDriver.Unmount", {"Name": "v", "ID": "cb"}))["Err"] == ""
    finally:
        proxy.close()
