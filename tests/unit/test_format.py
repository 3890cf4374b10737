"""Codecs of the on-storage format: round trips, and every kind of damage
detected as CorruptObject (never another exception, never wrong data)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsd.format import keys
from fsd.format.claim import EpochClaim
from fsd.format.dataobj import decode_block, encode_block
from fsd.format.framing import CorruptObject
from fsd.format.segment import Segment
from fsd.format.snapshot import decode_snapshot, encode_snapshot
from fsd.format.superblock import Superblock, make_superblock


def test_segment_roundtrip():
    s = Segment("segment", 3, 7, 123, [[1, 2, 3], [4, b"x"]], None, None, batch=9)
    assert Segment.decode(s.encode(), "k") == s


def test_superblock_and_claim_roundtrip():
    sb = make_superblock("vol", {"block_size": "256k", "compression": "zstd"}, 5)
    assert Superblock.decode(sb.encode(), "k") == sb and sb.block_size == 262144
    c = EpochClaim(2, "host", 42, "ab" * 16, 7, True)
    assert EpochClaim.decode(c.encode(), "k") == c


@pytest.mark.parametrize("opts,msg", [({"block_size": "3k"}, "power of two"), ({"block_size": "32M"}, "power of two"),
                                      ({"compression": "lz4"}, "compression"), ({"bogus": "1"}, "unknown")])
def test_superblock_options_validated(opts, msg):
    with pytest.raises(ValueError, match=msg):
        make_superblock("v", opts, 0)


def test_snapshot_roundtrip():
    recs = [[1, 1, 0o40755, 0, 0, 2, 0, 1, 2, 3, 0, None]]
    assert decode_snapshot(encode_snapshot(1, 2, 3, recs), "k") == (1, 2, 3, recs)


@pytest.mark.parametrize("compress", [False, True])
def test_block_roundtrip_and_every_flip_detected(compress):
    raw = b"ferry " * 5000
    h, obj = encode_block(raw, compress)
    assert decode_block(obj, h, "k") == raw
    for i in range(0, len(obj), max(1, len(obj) // 200)):
        bad = bytearray(obj)
        bad[i] ^= 0x40
        with pytest.raises(CorruptObject):
            decode_block(bytes(bad), h, "k")
    with pytest.raises(CorruptObject):
        decode_block(obj[:-1], h, "k")


def test_framed_object_every_flip_detected():
    data = Segment("seal", 1, 2, 3, [], "release", 1).encode()
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0x01
        with pytest.raises(CorruptObject):
            Segment.decode(bytes(bad), "k")
    with pytest.raises(CorruptObject, match="version"):
        Segment.decode(data[:4] + b"\x02" + data[5:], "k")


@given(st.binary(max_size=300))
def test_garbage_is_always_corrupt(data):
    for fn in (lambda d: Segment.decode(d, "k"), lambda d: Superblock.decode(d, "k"),
               lambda d: decode_snapshot(d, "k"), lambda d: decode_block(d, b"\0" * 32, "k")):
        with pytest.raises(CorruptObject):
            fn(data)


def test_key_order_is_numeric_order():
    ks = [keys.journal_key("v", e, s) for e, s in [(1, 1), (1, 2), (1, 16), (2, 1), (16, 1)]]
    assert ks == sorted(ks)
    assert [keys.parse_journal_key("v", k) for k in ks] == [(1, 1), (1, 2), (1, 16), (2, 1), (16, 1)]
    assert keys.parse_journal_key("v", "v/journal/zz/1") is None
    h = bytes(range(32))
    assert keys.parse_data_key("v", keys.data_key("v", h)) == h


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 129, "bad\x01name", "-dash", ".hidden", "ünï", "a b"])
def test_bad_volume_names(name):
    with pytest.raises(ValueError):
        keys.validate_volume_name(name)


@pytest.mark.parametrize("name", ["data", "pg-main_01", "a.b", "x" * 128, "0"])
def test_good_volume_names(name):
    keys.validate_volume_name(name)
