"""`ferry control backup` and `restore`: from a running SQLite service into etcd and back."""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import trio

from control.etcd_state import EtcdState
from control.leases import Config
from control.server import ControlServer
from control.sqlite_state import SqliteState

from .conftest import TOKEN, Running


def ferry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parents[2])


async def _serve(nursery, state) -> tuple[Running, trio.CancelScope]:
    server = ControlServer(state, TOKEN, Config(ttl=2.0, heartbeat=0.5))
    scope = trio.CancelScope()

    async def run(task_status=trio.TASK_STATUS_IGNORED):
        with scope:
            await server.serve("127.0.0.1", 0, task_status=task_status)
    port = await nursery.start(run)
    return Running(server, port), scope


async def _views(r: Running) -> tuple[list, list]:
    async with r.client() as c:
        vols = [(v["name"], v["options"], v["labels"], v["snapshots"], (v["lease"] or {}).get("host"))
                for v in await c.volume_list()]
        hosts = sorted(h["host_id"] for h in await c.host_list())
    return vols, hosts


async def test_backup_of_a_running_sqlite_service_restores_into_etcd_and_back(nursery, tmp_path, etcd1):
    sq = SqliteState(tmp_path / "c.db")
    r, scope = await _serve(nursery, sq)
    async with r.client() as c:
        await c.host_register("h1")
        await c.volume_create("a", {"durability": "local"}, {"app": "db"})
        await c.volume_create("b")
        await c.lease_acquire("a", "h1")
    before = await _views(r)
    bak = tmp_path / "control.bak"
    out = await trio.to_thread.run_sync(lambda: ferry("control", "backup", "--state", f"sqlite:{tmp_path}/c.db",
                                                      "-o", str(bak)))
    assert out.returncode == 0, out.stderr
    assert "2 volumes, 1 hosts, 1 leases" in out.stderr
    scope.cancel()
    await sq.aclose()

    url = etcd1.url(f"/restore-{uuid.uuid4().hex[:8]}/")
    out = await trio.to_thread.run_sync(lambda: ferry("control", "restore", "--state", url, str(bak)))
    assert out.returncode == 0, out.stderr
    again = await trio.to_thread.run_sync(lambda: ferry("control", "restore", "--state", url, str(bak)))
    assert again.returncode == 2 and "not empty" in again.stderr and "--force" in again.stderr
    eps, prefix = url[len("etcd://"):].split("/", 1)
    et = EtcdState(eps.split(","), prefix="/" + prefix)
    r2, scope2 = await _serve(nursery, et)
    assert await _views(r2) == before
    scope2.cancel()
    await et.aclose()

    # and back into a new SQLite file
    out = await trio.to_thread.run_sync(lambda: ferry("control", "restore", "--state",
                                                      f"sqlite:{tmp_path}/new.db", str(bak)))
    assert out.returncode == 0, out.stderr
    sq2 = SqliteState(tmp_path / "new.db")
    r3, scope3 = await _serve(nursery, sq2)
    assert await _views(r3) == before
    scope3.cancel()
    await sq2.aclose()


async def test_a_damaged_or_foreign_backup_restores_nothing(tmp_path):
    for name, blob in (("empty", b""), ("json", b'{"rows": []}'), ("garbage", b"\x93\x01\x02")):
        f = tmp_path / name
        f.write_bytes(blob)
        out = await trio.to_thread.run_sync(lambda f=f: ferry("control", "restore", "--state",
                                                              f"sqlite:{tmp_path}/x.db", str(f)))
        assert out.returncode == 2 and "not a ferry control backup" in out.stderr, out.stderr
    assert not (tmp_path / "x.db").exists()               # nothing was even opened
