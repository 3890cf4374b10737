"""agent/plugin.py: request validation, table-driven (no I/O)."""
from __future__ import annotations

import json

import pytest

from agent import plugin as p


def body(obj) -> bytes:
    return json.dumps(obj).encode()


OK_CASES = [
    ("/Plugin.Activate", b"", p.Activate()),
    ("/Plugin.Activate", b"{}", p.Activate()),
    ("/Plugin.Activate", b"null", p.Activate()),
    ("/VolumeDriver.Capabilities", b"", p.Capabilities()),
    ("/VolumeDriver.List", b"{}", p.ListVolumes()),
    ("/VolumeDriver.Create", body({"Name": "v1"}), p.Create("v1", {})),
    ("/VolumeDriver.Create", body({"Name": "v1", "Opts": None}), p.Create("v1", {})),
    ("/VolumeDriver.Create", body({"Name": "v1", "Opts": {"durability": "local", "block_size": "256k"}}),
     p.Create("v1", {"durability": "local", "block_size": "256k"})),
    ("/VolumeDriver.Remove", body({"Name": "a.b_c-d"}), p.Remove("a.b_c-d")),
    ("/VolumeDriver.Path", body({"Name": "v"}), p.Path("v")),
    ("/VolumeDriver.Get", body({"Name": "v", "Extra": 1}), p.Get("v")),
    ("/VolumeDriver.Mount", body({"Name": "v", "ID": "abc"}), p.Mount("v", "abc")),
    ("/VolumeDriver.Unmount", body({"Name": "v", "ID": "abc"}), p.Unmount("v", "abc")),
]


@pytest.mark.parametrize("path,raw,expected", OK_CASES)
def test_valid_requests(path, raw, expected):
    assert p.parse_request(path, raw) == expected


BAD_CASES = [
    ("/VolumeDriver.Nope", b"{}", "unknown endpoint"),
    ("/VolumeDriver.Create", b"{not json", "not valid JSON"),
    ("/VolumeDriver.Create", b"\xff\xfe", "not UTF-8"),
    ("/VolumeDriver.Create", b"", "must be a JSON object"),
    ("/VolumeDriver.Create", b"[1,2]", "must be a JSON object"),
    ("/VolumeDriver.Create", b'"v"', "must be a JSON object"),
    ("/Plugin.Activate", b"[]", "must be a JSON object"),
    ("/VolumeDriver.Create", body({}), "'Name'"),
    ("/VolumeDriver.Create", body({"Name": None}), "'Name'"),
    ("/VolumeDriver.Create", body({"Name": 5}), "must be a string"),
    ("/VolumeDriver.Create", body({"Name": ["v"]}), "must be a string"),
    ("/VolumeDriver.Create", body({"Name": ""}), "must not be empty"),
    ("/VolumeDriver.Create", body({"Name": ".."}), "not allowed"),
    ("/VolumeDriver.Create", body({"Name": "a/b"}), "'/'"),
    ("/VolumeDriver.Create", body({"Name": "x" * 129}), "129 characters"),
    ("/VolumeDriver.Create", body({"Name": "a\x01b"}), "contains"),
    ("/VolumeDriver.Create", body({"Name": "-rf"}), "must not start"),
    ("/VolumeDriver.Create", body({"Name": "v", "Opts": "durability=local"}), "'Opts' must be an object"),
    ("/VolumeDriver.Create", body({"Name": "v", "Opts": {"durability": 1}}), "must be a string"),
    ("/VolumeDriver.Create", body({"Name": "v", "Opts": {"colour": "red"}}), "unknown volume option"),
    ("/VolumeDriver.Create", body({"Name": "v", "Opts": {"durability": "maybe"}}), "durability"),
    ("/VolumeDriver.Create", body({"Name": "v", "Opts": {"block_size": "3k"}}), "block_size"),
    ("/VolumeDriver.Mount", body({"Name": "v"}), "'ID'"),
    ("/VolumeDriver.Mount", body({"Name": "v", "ID": 7}), "'ID' must be a string"),
    ("/VolumeDriver.Unmount", body({"Name": "v", "ID": ""}), "'ID' must be"),
    ("/VolumeDriver.Remove", body({"Name": True}), "must be a string"),
    ("/VolumeDriver.Get", b"{" * 2_000_000, "too large"),
]


@pytest.mark.parametrize("path,raw,needle", BAD_CASES)
def test_bad_requests_say_what_is_wrong(path, raw, needle):
    with pytest.raises(p.BadRequest) as ei:
        p.parse_request(path, raw)
    assert needle in str(ei.value)


def test_unknown_option_lists_known_ones():
    with pytest.raises(p.BadRequest) as ei:
        p.parse_request("/VolumeDriver.Create", body({"Name": "v", "Opts": {"colour": "red"}}))
    msg = str(ei.value)
    for known in ("durability", "commit_interval", "cache_size", "block_size", "compression"):
        assert known in msg


def test_replies():
    assert p.activate_reply() == {"Implements": ["VolumeDriver"]}
    assert p.capabilities_reply() == {"Capabilities": {"Scope": "global"}}
    assert p.ok(Mountpoint="/m") == {"Mountpoint": "/m", "Err": ""}
    assert p.err("x") == {"Err": "x"}
    assert p.err("")["Err"]
    assert p.volume_entry("v", None) == {"Name": "v", "Mountpoint": ""}
    # Docker parses CreatedAt as RFC 3339; without it `docker volume inspect` says 0001-01-01T00:00:00Z
    assert p.volume_entry("v", "/m", {"a": 1}, created=1796630400.7) == {
        "Name": "v", "Mountpoint": "/m", "CreatedAt": "2026-12-07T08:00:00Z", "Status": {"a": 1}}
