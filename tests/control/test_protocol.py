"""Wire format: framing and request validation are robust to garbage."""
from __future__ import annotations

import struct

import msgpack
import pytest

from control import protocol as P


def body(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def good(**kw):
    return {"v": 1, "id": 7, "token": "t", "op": "ping", "args": {}, **kw}


def test_frame_roundtrip_and_split_delivery():
    frame = P.encode_frame({"a": 1}) + P.encode_frame([1, 2])
    fb = P.FrameBuffer()
    got = []
    for i in range(len(frame)):                # one byte at a time
        fb.feed(frame[i:i + 1])
        while (b := fb.next_frame()) is not None:
            got.append(P.unpack(b))
    assert got == [{"a": 1}, [1, 2]] and fb.pending == 0


def test_frame_too_large():
    fb = P.FrameBuffer()
    fb.feed(struct.pack(">I", P.MAX_FRAME + 1))
    with pytest.raises(P.FrameError):
        fb.next_frame()
    with pytest.raises(P.FrameError):
        P.encode_frame(b"x" * (P.MAX_FRAME + 1))


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", b"\xd4\x05\x00", b"\x81\x01\x02",
                                 body("a") + b"extra", b"\xa3ab\xff", b"\x81\xa1a\xc7\x01\x05x"])
def test_undecodable_is_bad_request(raw):
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(raw)
    assert e.value.code == "bad_request"


@pytest.mark.parametrize("msg,code", [
    ([1, 2], "bad_request"), ("x", "bad_request"), (None, "bad_request"),
    (good(id="1"), "bad_request"), (good(id=-1), "bad_request"), (good(id=True), "bad_request"),
    (good(v=2), "unsupported_version"), (good(v=None), "unsupported_version"),
    (good(op=5), "bad_request"), (good(args=[1]), "bad_request"),
])
def test_bad_shapes(msg, code):
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(body(msg))
    assert e.value.code == code


def test_version_error_keeps_id():
    with pytest.raises(P.ProtocolError) as e:
        P.parse_request(body(good(v=99)))
    assert e.value.id == 7 and "version 1" in e.value.message


@pytest.mark.parametrize("op,args", [
    ("nope", {}),
    ("volume.create", {}),
    ("volume.create", {"name": 5}),
    ("volume.create", {"name": "a", "options": {"k": 1}}),
    ("volume.create", {"name": "a", "options": ["x"]}),
    ("volume.create", {"name": "a", "extra": 1}),
    ("lease.acquire", {"volume": "a", "host_id": "h", "wait": -1}),
    ("lease.acquire", {"volume": "a", "host_id": "h", "wait": float("nan")}),
    ("lease.acquire", {"volume": "a", "host_id": "h", "wait": 1e9}),
    ("lease.acquire", {"volume": "a", "host_id": "h", "wait": True}),
    ("lease.acquire", {"volume": "a", "host_id": "h", "in_use_wait": -1}),
    ("lease.release", {"volume": "a", "host_id": "h", "epoch": "3"}),
    ("lease.release", {"volume": "a", "host_id": "h", "epoch": -3}),
    ("host.heartbeat", {"host_id": "h", "volumes": {"a": 1}}),
    ("host.heartbeat", {"host_id": "h", "volumes": [{"name": "a", "in_use": "yes"}]}),
    ("host.heartbeat", {"host_id": "h", "volumes": [7]}),
    ("host.watch", {"host_id": "h", "timeout": "10"}),
])
def test_bad_args(op, args):
    req = P.parse_request(body(good(op=op, args=args)))
    with pytest.raises(P.ProtocolError) as e:
        P.check_args(req)
    assert e.value.code == "bad_request" and e.value.id == 7


def test_good_args_with_defaults():
    req = P.parse_request(body(good(op="lease.acquire", args={"volume": "a", "host_id": "h"})))
    assert P.check_args(req) == {"volume": "a", "host_id": "h", "wait": 0.0, "in_use_wait": 0.0}
    req = P.parse_request(body(good(op="host.heartbeat", args={"host_id": "h", "volumes": [
        {"name": "v", "in_use": True, "epoch": 3, "upload_lag_s": 1}]})))
    assert P.check_args(req)["volumes"] == [{"name": "v", "in_use": True, "epoch": 3, "upload_lag_s": 1.0,
                                             "last_gc": None}]


def test_every_op_in_contract_has_a_spec():
    ops = {"ping", "volume.create", "volume.get", "volume.list", "volume.remove", "volume.move", "volume.resize",
           "host.register", "host.heartbeat", "host.list", "host.watch", "lease.acquire",
           "lease.release", "lease.refuse_move", "status", "removal.marked", "removal.aborted",
           "removal.done", "removal.list", "snapshot.create", "snapshot.rm", "snapshot.done",
           "volume.recover", "removal.recover"}
    assert set(P.OPS) == ops
