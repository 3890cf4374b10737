"""The plugin protocol endpoint by endpoint over the real unix socket, with a
real (in-process) control service. No FUSE needed here: nothing is mounted."""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import UTC, datetime

import pytest
import trio

from agent.http import bind_unix_socket
from tests.agent.harness import RunningAgent, agent_config, control_client, post, raw_exchange, start_control


@pytest.fixture
async def env(nursery, tmp_path, run_dir, file_store_url):
    addr = await start_control(nursery, tmp_path)
    ra = RunningAgent(nursery, agent_config(tmp_path, addr, "h1", file_store_url))
    await ra.start()
    return ra, addr


async def volumes_at_control(addr):
    async with control_client(addr) as c:
        return sorted(v["name"] for v in await c.volume_list())


async def test_activate_and_capabilities(env):
    ra, _ = env
    assert await ra.call("/Plugin.Activate") == {"Implements": ["VolumeDriver"]}
    assert await ra.call("/VolumeDriver.Capabilities", {}) == {"Capabilities": {"Scope": "global"}}


BAD = [
    (b"{garbage", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (json.dumps({"Name": 12}).encode(), "must be a string"),
    (json.dumps({"Name": ""}).encode(), "must not be empty"),
    (json.dumps({"Name": "../etc"}).encode(), "contains '/'"),
    (json.dumps({"Name": "x" * 200}).encode(), "at most 128"),
    (json.dumps({"Name": "v", "Opts": {"colour": "red"}}).encode(), "known:"),
    (json.dumps({"Name": "v", "Opts": {"durability": 5}}).encode(), "must be a string"),
    (json.dumps({"Name": "v", "Opts": {"size": "tiny"}}).encode(), "not a size"),
    (json.dumps({"Name": "v", "Opts": {"size": "99999999999999999999999999G"}}).encode(), "too large"),
    (json.dumps({"Name": "v", "Opts": {"size": "9" * 400}}).encode(), "not a size"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
]


async def test_create_refuses_bad_input_and_changes_nothing(env, file_store_url):
    ra, addr = env
    for raw, needle in BAD:
        r = await ra.call("/VolumeDriver.Create", raw=raw)
        assert needle in r["Err"], (raw, r)
    assert await volumes_at_control(addr) == []
    store_dir = file_store_url[len("file://"):]
    assert [f for _, _, fs in os.walk(store_dir) for f in fs] == []      # nothing formatted


async def test_get_shows_the_labels_given_at_ferry_volume_create(env):
    ra, addr = env
    async with control_client(addr) as c:
        await c.volume_create("labelled", {"durability": "local"}, {"app": "postgres", "tier": "<b>db</b>"})
    r = await ra.call("/VolumeDriver.Get", {"Name": "labelled"})
    assert r["Err"] == "" and r["Volume"]["Status"]["labels"] == {"app": "postgres", "tier": "<b>db</b>"}, r


async def test_other_endpoints_refuse_bad_input(env):
    ra, _ = env
    for ep in ("Remove", "Mount", "Unmount", "Path", "Get"):
        for raw in (b"nope", b"{}", b'{"Name": null}', b'{"Name": ["a"]}', b'{"Name": "a/b"}'):
            r = await ra.call(f"/VolumeDriver.{ep}", raw=raw)
            assert r["Err"], (ep, raw)
    r = await ra.call("/VolumeDriver.Mount", {"Name": "v", "ID": 3})
    assert "'ID' must be a string" in r["Err"]
    r = await ra.call("/VolumeDriver.Nothing", {})
    assert "unknown endpoint" in r["Err"]


async def test_create_get_list_path_remove(env, file_store_url):
    ra, addr = env
    assert await ra.call("/VolumeDriver.Create", {"Name": "v1", "Opts": {"durability": "local"}}) == {"Err": ""}
    # idempotent (Swarm calls Create on every node)
    assert await ra.call("/VolumeDriver.Create", {"Name": "v1", "Opts": {"durability": "local"}}) == {"Err": ""}
    r = await ra.call("/VolumeDriver.Create", {"Name": "v1", "Opts": {"durability": "remote"}})
    assert "already exists" in r["Err"]
    # formatted on the store
    store_dir = file_store_url[len("file://"):]
    assert any("v1" in p for p, _, _ in os.walk(store_dir))
    assert await ra.call("/VolumeDriver.Create", {"Name": "v2"}) == {"Err": ""}

    r = await ra.call("/VolumeDriver.Get", {"Name": "v1"})
    assert r["Err"] == ""
    assert r["Volume"]["Name"] == "v1"
    assert r["Volume"]["Mountpoint"] == ""
    st = r["Volume"]["Status"]
    assert st["durability"] == "local" and st["owner"] is None and "epoch" in st and "upload_lag_s" in st
    assert r["Volume"]["CreatedAt"].endswith("Z") and "labels" not in st
    r = await ra.call("/VolumeDriver.Get", {"Name": "nope"})
    assert "does not exist" in r["Err"]

    r = await ra.call("/VolumeDriver.List", {})
    created = {v["Name"]: v.pop("CreatedAt") for v in r["Volumes"]}
    assert r == {"Volumes": [{"Name": "v1", "Mountpoint": "", "Status": {"snapshots": []}},
                             {"Name": "v2", "Mountpoint": "", "Status": {"snapshots": []}}], "Err": ""}
    for name, at in created.items():      # when the control service recorded it: just now
        age = time.time() - datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        assert -2 < age < 120, (name, at)
    assert await ra.call("/VolumeDriver.Path", {"Name": "v1"}) == {"Mountpoint": "", "Err": ""}

    r = await ra.call("/VolumeDriver.Unmount", {"Name": "v1", "ID": "never-mounted"})
    assert "no mount with ID" in r["Err"]
    r = await ra.call("/VolumeDriver.Mount", {"Name": "ghost", "ID": "m1"})
    assert "does not exist" in r["Err"] and "docker volume create" in r["Err"]

    assert await ra.call("/VolumeDriver.Remove", {"Name": "v2"}) == {"Err": ""}
    assert await volumes_at_control(addr) == ["v1"]
    r = await ra.call("/VolumeDriver.Remove", {"Name": "v2"})
    assert "does not exist" in r["Err"]


async def test_in_use_on_another_host_refuses_mount_and_remove(env):
    ra, addr = env
    assert await ra.call("/VolumeDriver.Create", {"Name": "shared"}) == {"Err": ""}
    async with control_client(addr) as other:
        await other.host_register("h2")
        res = await other.lease_acquire("shared", "h2")
        assert res["status"] == "granted"
        async def alive_h2() -> None:      # a live owner heartbeats; a silent one would be taken over
            while True:
                await other.host_heartbeat("h2", [{"name": "shared", "in_use": True, "epoch": 2,
                                                   "upload_lag_s": 0.0}])
                await trio.sleep(0.3)

        async with trio.open_nursery() as n:
            n.start_soon(alive_h2)
            r = await ra.call("/VolumeDriver.Mount", {"Name": "shared", "ID": "c1"})
            assert "in use on host h2" in r["Err"] and "stop its containers there first" in r["Err"]
            r = await ra.call("/VolumeDriver.Remove", {"Name": "shared"})
            assert "in use on host 'h2'" in r["Err"]
            r = await ra.call("/VolumeDriver.Get", {"Name": "shared"})
            assert r["Volume"]["Status"]["owner"] == "h2" and r["Volume"]["Status"]["epoch"] == 2
            n.cancel_scope.cancel()
        await other.lease_release("shared", "h2", 2)
    assert await ra.call("/VolumeDriver.Remove", {"Name": "shared"}) == {"Err": ""}


async def test_malformed_http(env):
    ra, _ = env
    out = await raw_exchange(ra.sock, b"THIS IS NOT HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b'"Err"' in out
    out = await raw_exchange(ra.sock, b"\x00\xff" * 100 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    out = await raw_exchange(ra.sock, b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
                                      b"Connection: close\r\n\r\n" + b"x" * 1000)
    assert out.startswith(b"HTTP/1.1 413")
    out = await raw_exchange(ra.sock, b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000)
    assert out.startswith(b"HTTP/1.1 431") or out.startswith(b"HTTP/1.1 400")
    status, r = await post(ra.sock, "/Plugin.Activate")     # still serving
    assert status == 200 and r["Implements"] == ["VolumeDriver"]
    # GET is refused; keep-alive: two requests on one connection
    req = (b"GET /Plugin.Activate HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /VolumeDriver.Capabilities HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    out = await raw_exchange(ra.sock, req)
    assert out.startswith(b"HTTP/1.1 405") and b'"Scope": "global"' in out
    # HEAD gets its answer's headers without a body (h11 refuses a body there: it killed the server once)
    req = (b"HEAD /Plugin.Activate HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /VolumeDriver.Capabilities HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    out = await raw_exchange(ra.sock, req)
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405") and rest.startswith(b"HTTP/1.1 200"), out
    assert (await post(ra.sock, "/Plugin.Activate"))[0] == 200
    # a client that connects and vanishes does no harm
    s = await trio.open_unix_socket(str(ra.sock))
    await s.send_all(b"POST /Plugin.Act")
    await s.aclose()
    assert (await post(ra.sock, "/Plugin.Activate"))[0] == 200


def test_socket_binding(tmp_path):
    path = tmp_path / "a" / "b" / "ferry.sock"
    s1 = bind_unix_socket(path)             # parent dirs created
    try:
        with pytest.raises(OSError, match="already serves"):
            bind_unix_socket(path)
    finally:
        s1.close()
    s2 = bind_unix_socket(path)             # stale socket file replaced
    s2.close()
    c = socket.socket(socket.AF_UNIX)
    with pytest.raises(OSError):
        c.connect(str(path))
    c.close()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OSError, match="not a socket"):
        bind_unix_socket(f)
