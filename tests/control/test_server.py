"""The control service over real TCP: auth, versions, garbage, waiting, watch."""
from __future__ import annotations

import struct

import pytest
import trio

from control import protocol as P
from control.client import ControlClient, ControlError, Unreachable
from control.state import NEW, Op

from .conftest import TOKEN


async def raw_call(port: int, data: bytes, expect_frames: int = 1) -> list:
    """Send raw bytes, read up to `expect_frames` responses (fewer if the server closes)."""
    s = await trio.open_tcp_stream("127.0.0.1", port)
    out = []
    async with s:
        await s.send_all(data)
        fb = P.FrameBuffer()
        with trio.fail_after(5):
            while len(out) < expect_frames:
                b = fb.next_frame()
                if b is not None:
                    out.append(P.unpack(b))
                    continue
                chunk = await s.receive_some(65536)
                if not chunk:
                    break
                fb.feed(chunk)
    return out


def req(op="ping", args=None, token=TOKEN, v=1, rid=1) -> bytes:
    return P.encode_frame({"v": v, "id": rid, "token": token, "op": op, "args": args or {}})


async def snapshot(control) -> list:
    return (await control.server.state.scan("")).rows


async def test_ping_and_wrong_token_changes_nothing(control):
    async with control.client() as c:
        assert (await c.ping())["version"] == 1
    before = await snapshot(control)
    async with control.client(token="wrong") as c:
        with pytest.raises(ControlError) as e:
            await c.volume_create("v1")
        assert e.value.code == "unauthorized"
    async with control.client(token="") as c:
        with pytest.raises(ControlError) as e:
            await c.ping()
        assert e.value.code == "unauthorized"
    assert await snapshot(control) == before
    assert "v1" not in control.server.cluster.volumes


async def test_wrong_version_and_garbage_frames(control):
    r = await raw_call(control.port, req(v=2, rid=9))
    assert r[0]["ok"] is False and r[0]["error"]["code"] == "unsupported_version" and r[0]["id"] == 9
    garbage = [P.HEADER.pack(3) + b"\xc1\xc1\xc1", P.encode_frame([1, 2, 3]), P.encode_frame("hello"),
               P.encode_frame({"v": 1, "id": "x"}), req(op="volume.create", args={"name": 3}),
               req(op="volume.create", args={"name": "ok", "options": {"nosuch": "1"}}),
               req(op="volume.create", args={"name": "../etc"}), req(op="no.such.op")]
    r = await raw_call(control.port, b"".join(garbage), expect_frames=len(garbage))
    assert [x["error"]["code"] for x in r] == ["bad_request"] * len(garbage)
    assert "known:" in r[5]["error"]["message"] and "durability" in r[5]["error"]["message"]
    assert control.server.cluster.volumes == {}
    # the connection still works after garbage
    r = await raw_call(control.port, P.encode_frame([1]) + req(rid=5), expect_frames=2)
    assert r[1]["ok"] is True and r[1]["id"] == 5


async def test_huge_length_closes_connection_after_answer(control):
    r = await raw_call(control.port, struct.pack(">I", 0xFFFFFFFF) + b"x" * 10 + req(), expect_frames=2)
    assert len(r) == 1 and r[0]["error"]["code"] == "bad_request"


async def test_truncated_frame_then_close_is_harmless(control):
    s = await trio.open_tcp_stream("127.0.0.1", control.port)
    await s.send_all(req(op="volume.create", args={"name": "t"})[:-3])
    await s.aclose()
    await trio.sleep(0.1)
    assert control.server.cluster.volumes == {}
    async with control.client() as c:
        assert (await c.ping())["version"] == 1


async def test_volume_lifecycle(control):
    async with control.client() as c:
        v = await c.volume_create("data", {"durability": "local"}, {"app": "pg"})
        assert v["durability"] == "local" and v["lease"] is None
        assert (await c.volume_create("data", {"durability": "local"}, {"app": "pg"}))["name"] == "data"
        with pytest.raises(ControlError) as e:
            await c.volume_create("data", {}, {})
        assert e.value.code == "exists"
        with pytest.raises(ControlError) as e:
            await c.volume_get("nope")
        assert e.value.code == "not_found"
        await c.host_register("a", "10.0.0.1", "0.1")
        g = await c.lease_acquire("data", "a")
        assert g["status"] == "granted" and g["takeover"] is False
        hb = await c.host_heartbeat("a", [{"name": "data", "in_use": True, "epoch": 4, "upload_lag_s": 0.7}])
        assert hb["moves"] == [] and hb["ttl"] == 2.0
        got = await c.volume_get("data")
        assert got["lease"]["host"] == "a" and got["lease"]["epoch"] == 4
        assert got["lease"]["upload_lag_s"] == 0.7 and got["lease"]["in_use"] is True
        with pytest.raises(ControlError) as e:
            await c.volume_remove("data")
        assert e.value.code == "busy" and "'a'" in e.value.message
        await c.lease_release("data", "a", 4)
        r = await c.volume_remove("data")           # no agent fences it: marked, assigned to a live host
        assert r == {"status": "removing", "host": "a"}
        assert [v["state"] for v in await c.volume_list()] == ["removing"]
        with pytest.raises(ControlError) as e:
            await c.lease_acquire("data", "a")
        assert e.value.code == "conflict" and "being removed" in e.value.message
        w = await c.host_watch("a", timeout=0.1)
        assert w["removals"] == [{"name": "data", "root": None}]
        await c.removal_marked("data", "a", "data/u1")      # what the agent does once the store is fenced
        assert await c.volume_list() == []
        await c.host_heartbeat("a", [], [{"root": "data/u1", "deleted": 3, "total": 10, "bytes": 99}])
        (job,) = await c.removal_list()
        assert (job["root"], job["name"], job["host"], job["deleted"], job["total"]) == ("data/u1", "data", "a",
                                                                                       3, 10)
        await c.volume_create("data", {}, {})               # the name is free while the deletion runs
        assert (await c.removal_done("data/u1", "a"))["done"] is True
        assert await c.removal_list() == []
        assert (await c.removal_done("data/u1", "a"))["done"] is False


async def test_acquire_wait_woken_by_release(control):
    async with control.client() as a, control.client() as b:
        await a.volume_create("v")
        await a.host_register("A")
        await b.host_register("B")
        await a.lease_acquire("v", "A")
        await a.host_heartbeat("A", [{"name": "v", "in_use": False, "epoch": 2, "upload_lag_s": 0.0}])
        result = {}

        async def acquirer():
            result["r"] = await b.lease_acquire("v", "B", wait=10)
            result["t"] = trio.current_time()

        async with trio.open_nursery() as n:
            n.start_soon(acquirer)
            w = await a.host_watch("A", timeout=5)
            assert w["moves"] == [{"volume": "v", "to": "B"}]
            await trio.sleep(0.2)
            assert "r" not in result              # still waiting for A's answer
            t_release = trio.current_time()
            await a.lease_release("v", "A", 2)
        assert result["r"]["status"] == "granted" and result["r"]["takeover"] is False
        assert result["r"]["owner"] == "B"
        assert result["t"] - t_release < 1.0      # woken by the change, not by a tick / timeout


async def test_acquire_wait_refused_is_busy(control):
    async with control.client() as a, control.client() as b:
        await a.volume_create("v")
        await a.host_register("A")
        await b.host_register("B")
        await a.lease_acquire("v", "A")
        async with trio.open_nursery() as n:
            res = {}

            async def acquirer():
                res["r"] = await b.lease_acquire("v", "B", wait=10)
            n.start_soon(acquirer)
            w = await a.host_watch("A", timeout=5)
            assert w["moves"][0]["to"] == "B"
            await a.lease_refuse_move("v", "A")
        assert res["r"]["status"] == "busy" and res["r"]["owner"] == "A"
        assert (await a.volume_get("v"))["lease"]["host"] == "A"


async def test_acquire_wait_times_out_pending(control):
    async with control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.host_register("B")
        await c.lease_acquire("v", "A")
        with trio.fail_after(3):
            r = await c.lease_acquire("v", "B", wait=0.5)
        assert r["status"] == "pending" and "did not answer" in r["message"]


async def test_takeover_after_expiry(control):
    async with control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.host_register("B")
        await c.lease_acquire("v", "A")
        # B waits; A never answers nor heartbeats: after TTL (2 s) B takes over.
        with trio.fail_after(6):
            r = await c.lease_acquire("v", "B", wait=5)
        assert r["status"] == "granted" and r["takeover"] is True and r["previous_owner"] == "A"
        hosts = {h["host_id"]: h for h in await c.host_list()}
        assert hosts["A"]["alive"] is False


async def test_watch_times_out_empty_and_unknown_host(control):
    async with control.client() as c:
        await c.host_register("A")
        with trio.fail_after(3):
            assert await c.host_watch("A", timeout=0.3) == {"moves": [], "removals": [], "snapshots": []}
        with pytest.raises(ControlError) as e:
            await c.host_watch("ghost", timeout=0.3)
        assert e.value.code == "not_found"


async def test_volume_move_released(control):
    async with control.client() as a, control.client() as op:
        await a.volume_create("v")
        await a.host_register("A")
        await a.host_register("B")
        await a.lease_acquire("v", "A")
        async with trio.open_nursery() as n:
            res = {}

            async def mover():
                res["r"] = await op.volume_move("v", "B", wait=5)
            n.start_soon(mover)
            w = await a.host_watch("A", timeout=5)
            assert w["moves"] == [{"volume": "v", "to": "B"}]
            await a.lease_release("v", "A")
        assert res["r"]["status"] == "released"
        g = await a.lease_acquire("v", "B")
        assert g["status"] == "granted" and g["takeover"] is False


async def test_many_concurrent_connections(control):
    async with control.client() as c:
        await c.volume_create("v")
    results = []

    async def one(i: int):
        async with control.client() as cl:
            await cl.host_register(f"h{i}")
            results.append(await cl.lease_acquire("v", f"h{i}"))
    async with trio.open_nursery() as n:
        for i in range(30):
            n.start_soon(one, i)
    granted = [r for r in results if r["status"] == "granted"]
    assert len(granted) == 1                    # exactly one owner
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["busy"] * 28 + ["granted", "pending"]   # one move at a time


async def test_client_reconnects_after_connection_drop(control):
    async with control.client() as c:
        await c.ping()
        for conn in c._idle:                   # simulate the server dropping idle connections
            await conn.stream.aclose()
        assert (await c.ping())["version"] == 1


async def test_unreachable_message():
    async with ControlClient("127.0.0.1:1", "t", connect_timeout=2) as c:
        with pytest.raises(Unreachable) as e:
            await c.ping()
    assert "--control" in str(e.value) and "127.0.0.1:1" in str(e.value)


async def test_state_write_failure_changes_nothing(control, monkeypatch):
    from control.state import StateError

    async def boom(ops):
        raise StateError("disk on fire")
    monkeypatch.setattr(control.server.state, "txn", boom)
    async with control.client() as c:
        with pytest.raises(ControlError) as e:
            await c.volume_create("v")
        assert e.value.code == "unavailable" and "disk on fire" in e.value.message and "retry" in e.value.message
    assert control.server.cluster.volumes == {}


async def test_heartbeat_reports_reach_the_state_store(control):
    async with control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.lease_acquire("v", "A")
        await c.host_heartbeat("A", [{"name": "v", "in_use": True, "epoch": 6, "upload_lag_s": 0.1}])
    with trio.fail_after(5):
        while True:
            got = await control.server.state.get("leases/v")
            if got and got[0]["epoch"] == 6:
                break
            await trio.sleep(0.05)
    assert got[0]["in_use"] is True and got[0]["host"] == "A"


def _random_value(rng, depth=0):
    kinds = ["int", "str", "bytes", "float", "none", "bool", "list", "map"] if depth < 3 else ["int", "str", "none"]
    k = rng.choice(kinds)
    if k == "int":
        return rng.choice([0, -1, 1, 2 ** 63, -(2 ** 63), rng.randint(-1000, 1000)])
    if k == "str":
        return rng.choice(["", "a", "..", "/", "x" * 300, "volume.create", "\x00", "ünï"])
    if k == "bytes":
        return rng.randbytes(rng.randint(0, 8))
    if k == "float":
        return rng.choice([0.5, -1.0, float("inf"), float("nan"), 1e300])
    if k == "none":
        return None
    if k == "bool":
        return rng.random() < 0.5
    if k == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["name", "options", "labels", "volume", "host_id", "wait", "epoch", "volumes", "to",
                        "timeout", "x"]): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


async def test_fuzzed_requests_never_crash_or_change_state_without_token(control):
    import random
    rng = random.Random(1234)
    ops = list(P.OPS) + ["x", ""]
    frames = []
    for i in range(300):
        kind = i % 3
        if kind == 0:
            frames.append(P.HEADER.pack(n := rng.randint(0, 64)) + rng.randbytes(n))
        else:
            msg = {"v": rng.choice([1, 1, 2, "1", None]), "id": rng.choice([i, "i", -5, None]),
                   "token": rng.choice(["bad", None, 5, "x" * 1000]), "op": rng.choice(ops),
                   "args": _random_value(rng)}
            for key in rng.sample(list(msg), rng.randint(0, 2)):
                del msg[key]
            frames.append(P.encode_frame(msg))
    before = await snapshot(control)
    for chunk in range(0, len(frames), 4):     # 4 per connection: after 5 auth failures it closes
        r = await raw_call(control.port, b"".join(frames[chunk:chunk + 4]), expect_frames=4)
        assert len(r) == 4
        for x in r:
            assert x["ok"] is False and x["error"]["code"] in ("bad_request", "unsupported_version", "unauthorized")
    assert await snapshot(control) == before and control.server.cluster.volumes == {}


async def test_fuzzed_args_with_valid_token_get_clear_errors(control):
    import random
    rng = random.Random(99)
    async with control.client() as c:
        await c.host_register("h")
        await c.volume_create("v")
        for _i in range(300):
            op = rng.choice([o for o in P.OPS if o not in ("host.watch",)])
            args = _random_value(rng)
            if not isinstance(args, dict):
                args = {"x": args}
            if op in ("lease.acquire", "volume.move"):
                args["wait"] = 0
            try:
                await c.call(op, args)
            except ControlError as e:
                assert e.code != "internal", (op, args, e.message)
                assert e.message
        assert (await c.ping())["version"] == 1


async def test_register_returns_held_leases(control):
    async with control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.lease_acquire("v", "A")
        r = await c.host_register("A", "10.1.1.1", "0.2")
        assert r["leases"] == [{"volume": "v", "epoch": None, "generation": 1}]
        assert r["address"] == "10.1.1.1"
        with pytest.raises(ControlError) as e:
            await c.host_register("../bad")
        assert e.value.code == "bad_request"


async def test_volume_move_owner_dies_gives_free(control):
    async with control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.host_register("B")
        await c.lease_acquire("v", "A")
        with trio.fail_after(6):
            r = await c.volume_move("v", "B", wait=5)   # A never answers nor heartbeats (TTL 2 s)
        assert r["status"] == "free"


async def test_a_change_by_another_writer_is_seen_and_decided_on(control):
    async with control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.host_register("B")
        await c.host_heartbeat("B")
        # Another writer (a second replica, an operator's tool) grants the lease behind our back:
        # the service learns it from its watch (or from the failed compare) and answers from it.
        st = control.server.state
        await st.txn([Op("leases/v", NEW, {"volume": "v", "host": "B", "generation": 7, "epoch": 3,
                                           "in_use": True})])
        r = await c.lease_acquire("v", "A")
        assert r["status"] == "busy" and r["owner"] == "B" and r["generation"] == 7
        await st.txn([Op("leases/v", (await st.get("leases/v"))[1], delete=True)])
        with trio.fail_after(5):
            while "v" in control.server.cluster.leases:
                await trio.sleep(0.01)
        r = await c.lease_acquire("v", "A")
        assert r["status"] == "granted" and r["generation"] == 1


async def _in_use(c, host: str, volume: str) -> None:
    await c.host_heartbeat(host, [{"name": volume, "in_use": True, "epoch": 2, "upload_lag_s": 0.0}])


async def test_in_use_owner_that_goes_silent_is_taken_over_after_its_ttl(control):
    """A Mount issued right after the owner died must not fail at once with
    'in use': a dead owner never heartbeats again, so the acquire waits for
    its lease to expire and takes over."""
    async with control.client() as c:
        await c.volume_create("v")
        await c.host_register("A")
        await c.host_register("B")
        await c.lease_acquire("v", "A")
        await _in_use(c, "A", "v")                      # ... and then A dies
        with trio.fail_after(6):
            r = await c.lease_acquire("v", "B", wait=5)
        assert r["status"] == "granted" and r["takeover"] is True and r["previous_owner"] == "A"


async def test_in_use_owner_that_keeps_heartbeating_gives_busy_quickly(control):
    async with control.client() as c, control.client() as a:
        await c.volume_create("v")
        await c.host_register("A")
        await c.host_register("B")
        await c.lease_acquire("v", "A")
        await _in_use(a, "A", "v")

        async def alive() -> None:
            while True:
                await trio.sleep(0.25)
                await _in_use(a, "A", "v")

        async with trio.open_nursery() as n:
            n.start_soon(alive)
            with trio.fail_after(1.5):                  # about one heartbeat, never the TTL
                r = await c.lease_acquire("v", "B", wait=5)
            n.cancel_scope.cancel()
        assert r["status"] == "busy" and r["owner"] == "A"


async def test_removal_jobs_survive_a_restart_of_the_control_service(control):
    """A removal job is persistent: a control service that restarts (reloads its
    state) still hands it out, and a volume still to be fenced stays unusable."""
    from control import removals
    from control.server import ControlServer
    async with control.client() as c:
        for v in ("a", "b"):
            await c.volume_create(v)
        await c.host_register("A")
        await c.volume_remove("a", host_id="A")
        await c.volume_remove("b", host_id="A")
        await c.removal_marked("b", "A", "b/u1")
    fresh = ControlServer(control.server.state, TOKEN)
    await fresh.load()
    assert fresh.cluster.volumes["a"].removing == "A" and "b" not in fresh.cluster.volumes
    assert fresh.cluster.removals["b/u1"].name == "b"
    jobs = await fresh._mutate(lambda cl, now: removals.claim_jobs(cl, "A", now))
    assert jobs == [{"name": "a", "root": None}, {"name": "b", "root": "b/u1"}]
