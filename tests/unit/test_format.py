"""Codecs of the on-storage format: round trips, and every kind of damage
detected as CorruptObject (never another exception, never wrong data)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import struct

import blake3
import msgpack
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fsd.format import keys
from fsd.format.claim import EpochClaim
from fsd.format.dataobj import HASHES, HEAD_SIZE, block_hash, decode_block, encode_block
from fsd.format.dataobj import MAGIC as DMAGIC
from fsd.format.framing import CorruptObject, frame, unframe
from fsd.format.segment import Segment
from fsd.format.snapshot import decode_snapshot, encode_snapshot
from fsd.format.superblock import FORMAT, HASH_FORMAT, Superblock, make_superblock, parse_size
from fsd.format.superblock import HASHES as SB_HASHES

ALGO = "blake3"

SEAL = Segment("seal", 1, 2, 3, [], "release", 1)
INODE = [1, 1, 0o40755, 0, 0, 2, 0, 1, 2, 3, 0, None]


def _sb() -> Superblock:
    return make_superblock("vol", {"block_size": "256k", "compression": "zstd"}, 5)


def _claim() -> EpochClaim:
    return EpochClaim(2, "host", 42, "ab" * 16, 7, True)


# (encoded object, decoder) for every framed type
FRAMED = {
    "segment": (Segment("segment", 3, 7, 123, [[1, 2, 3], [4, b"x"]], batch=9).encode(),
                lambda d, k: Segment.decode(d, k)),
    "seal": (SEAL.encode(), lambda d, k: Segment.decode(d, k)),
    "superblock": (_sb().encode(), lambda d, k: Superblock.decode(d, k)),
    "claim": (_claim().encode(), lambda d, k: EpochClaim.decode(d, k)),
    "snapshot": (encode_snapshot(1, 2, 3, [INODE] * 20), decode_snapshot),
}


def _reframe(magic: bytes, version: int, body: bytes) -> bytes:
    """A framed object with a valid checksum around arbitrary body bytes."""
    head = magic + bytes([version]) + body
    return head + hashlib.blake2b(head, digest_size=32).digest()


# ------------------------------------------------------------- round trips

def test_segment_roundtrip():
    s = Segment("segment", 3, 7, 123, [[1, 2, 3], [4, b"x"]], None, None, batch=9)
    assert Segment.decode(s.encode(), "k") == s
    assert Segment.decode(SEAL.encode(), "k") == SEAL
    begin = Segment("begin", 1, 1, 0, [INODE])
    assert Segment.decode(begin.encode(), "k") == begin


def test_superblock_and_claim_roundtrip():
    sb = _sb()
    assert Superblock.decode(sb.encode(), "k") == sb
    assert sb.block_size == 262144 and sb.compression == "zstd" and sb.format == HASH_FORMAT and len(sb.uuid) == 32
    assert EpochClaim.decode(_claim().encode(), "k") == _claim()


def test_superblock_defaults():
    sb = make_superblock("v", {}, 0)
    assert (sb.block_size, sb.compression, sb.fencing, sb.options) == (1 << 20, "none", "conditional",
                                                                       {"history": 3600.0, "hash": "blake3"})
    assert sb.history_s == 3600.0 and sb.origins == () and sb.content_hash == "blake3" and sb.format == 5


def test_blake2b_volumes_keep_the_formats_older_releases_read():
    files = make_superblock("v", {"hash": "blake2b"}, 0)
    block = make_superblock("v", {"hash": "blake2b", "layout": "block"}, 0)
    assert (files.format, block.format) == (FORMAT, 4) and "hash" not in files.options
    for sb in (files, block):
        assert Superblock.decode(sb.encode(), "k").content_hash == "blake2b"
    assert Superblock.decode(make_superblock("v", {"layout": "block"}, 0).encode(), "k").format == HASH_FORMAT


def test_superblock_of_a_clone_roundtrips_and_older_formats_still_read():
    from fsd.format.superblock import Origin
    sb = _sb()
    sb.origins = (Origin("a", "a/" + "1" * 32, (3, 9), "a/" + "1" * 32 + "/pins/clone/" + sb.uuid),)
    assert Superblock.decode(sb.encode(), "k") == sb
    v2 = Superblock(volume="v", uuid="2" * 32, format=2, block_size=1 << 20, compression="none", created_ns=1)
    d = Superblock.decode(v2.encode(), "k")
    assert d.format == 2 and d.origins == () and d.history_s == 0.0


@pytest.mark.parametrize("bad", ["history=-1h", "history=soon", "history=400d"])
def test_bad_history_options_are_refused(bad):
    k, v = bad.split("=")
    with pytest.raises(ValueError, match="history"):
        make_superblock("v", {k: v}, 0)


@pytest.mark.parametrize("text,val", [("1M", 1 << 20), ("4096", 4096), ("64k", 65536), ("16M", 16 << 20)])
def test_parse_size(text, val):
    assert parse_size(text) == val


@pytest.mark.parametrize("opts,msg", [
    ({"block_size": "3k"}, "power of two"), ({"block_size": "32M"}, "power of two"),
    ({"block_size": "32k"}, "power of two"), ({"block_size": "96k"}, "power of two"),
    ({"block_size": "lots"}, "block_size"), ({"compression": "lz4"}, "compression"),
    ({"bogus": "1"}, "unknown .*bogus.*known: block_size=.*compression="),
    ({"hash": "sha1"}, "hash must be 'blake3' or 'blake2b', not 'sha1'"),
])
def test_superblock_options_validated(opts, msg):
    with pytest.raises(ValueError, match=msg):
        make_superblock("v", opts, 0)


def test_snapshot_roundtrip():
    recs = [INODE, [3, 1, b"name", 2, 1], [5, 2, 0, b"\x01" * 32, 100]]
    assert decode_snapshot(encode_snapshot(1, 2, 3, recs), "k") == (1, 2, 3, recs)
    assert decode_snapshot(encode_snapshot(4, 5, 6, iter(recs)), "k") == (4, 5, 6, recs)
    assert decode_snapshot(encode_snapshot(1, 1, 2, []), "k") == (1, 1, 2, [])


_REFERENCE_HASH = {"blake2b": lambda raw: hashlib.blake2b(raw, digest_size=32).digest(),
                   "blake3": lambda raw: blake3.blake3(raw).digest()}


@pytest.mark.parametrize("algo", ["blake3", "blake2b"])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("raw", [b"", b"x", b"ferry " * 5000, os.urandom(1 << 20)],
                         ids=["empty", "1", "text", "random"])
def test_block_roundtrip(compress, raw, algo):
    h, obj = encode_block(raw, compress, algo)
    assert h == _REFERENCE_HASH[algo](raw) == block_hash(raw, algo)
    out = decode_block(obj, h, "k", algo)
    assert out == raw and type(out) is bytes
    assert decode_block(memoryview(obj), h, "k", algo) == raw
    assert encode_block(bytearray(raw), compress, algo) == (h, obj)
    assert encode_block(memoryview(raw), compress, algo) == (h, obj)


def test_block_hashes_are_the_published_ones():
    """Known answers, so that a library change can never rename every block."""
    assert block_hash(b"", "blake3").hex() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    assert block_hash(b"", "blake2b").hex() == "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"
    assert set(HASHES) == set(SB_HASHES) and SB_HASHES[0] == "blake3"
    with pytest.raises(ValueError, match="unknown content hash 'md5'"):
        block_hash(b"", "md5")


def test_block_read_with_the_other_hash_is_refused():
    """A block named under one hash never passes as a block of a volume using the other."""
    raw = b"ferry " * 5000
    for algo, other in (("blake3", "blake2b"), ("blake2b", "blake3")):
        h, obj = encode_block(raw, False, algo)
        with pytest.raises(CorruptObject, match="hash mismatch"):
            decode_block(obj, h, "k", other)


def test_block_compression_only_when_it_saves_space():
    text = b"ferry " * 5000
    _, obj = encode_block(text, True, ALGO)
    assert obj[5] == 1 and len(obj) < len(text)
    noise = os.urandom(100_000)
    _, obj = encode_block(noise, True, ALGO)
    assert obj[5] == 0 and obj[HEAD_SIZE:] == noise
    _, obj = encode_block(text, False, ALGO)
    assert obj[5] == 0 and len(obj) == HEAD_SIZE + len(text)


def test_block_larger_than_max_refused():
    with pytest.raises(ValueError, match="maximum block size"):
        encode_block(bytes((16 << 20) + 1), False, ALGO)


# ---------------------------------------------------------- damage detected

@pytest.mark.parametrize("compress", [False, True])
def test_block_every_flip_and_truncation_detected(compress):
    raw = b"ferry " * 5000
    h, obj = encode_block(raw, compress, ALGO)
    step = 1 if compress else max(1, len(obj) // 500)
    for i in list(range(HEAD_SIZE)) + list(range(HEAD_SIZE, len(obj), step)):
        for bit in (0x01, 0x80):
            bad = bytearray(obj)
            bad[i] ^= bit
            with pytest.raises(CorruptObject, match="^k: "):
                decode_block(bytes(bad), h, "k", ALGO)
    for n in (0, 3, HEAD_SIZE - 1, HEAD_SIZE, len(obj) // 2, len(obj) - 1):
        with pytest.raises(CorruptObject):
            decode_block(obj[:n], h, "k", ALGO)
    with pytest.raises(CorruptObject):
        decode_block(obj + b"\0", h, "k", ALGO)


def test_block_specific_damage_messages():
    raw = b"ferry " * 5000
    h, obj = encode_block(raw, True, ALGO)
    with pytest.raises(CorruptObject, match="k: bad magic"):
        decode_block(b"XXXX" + obj[4:], h, "k", ALGO)
    with pytest.raises(CorruptObject, match="version 2 .*newer ferry"):
        decode_block(obj[:4] + b"\x02" + obj[5:], h, "k", ALGO)
    with pytest.raises(CorruptObject, match="unknown flags"):
        decode_block(obj[:5] + b"\x03" + obj[6:], h, "k", ALGO)
    with pytest.raises(CorruptObject, match="hash mismatch"):
        decode_block(obj, block_hash(b"other", ALGO), "k", ALGO)
    with pytest.raises(CorruptObject, match="truncated"):
        decode_block(obj[:5], h, "k", ALGO)
    # a header claiming an absurd size is refused before anything is allocated
    huge = struct.pack(">4sBBI", DMAGIC, 1, 1, 0xFFFFFFFF) + obj[HEAD_SIZE:]
    with pytest.raises(CorruptObject, match="maximum block size"):
        decode_block(huge, h, "k", ALGO)
    # a zstd frame whose own header lies about its size
    z = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    with pytest.raises(CorruptObject, match="does not declare its size"):
        decode_block(struct.pack(">4sBBI", DMAGIC, 1, 1, len(raw)) + z, h, "k", ALGO)
    z = zstandard.ZstdCompressor().compress(raw + b"!")
    with pytest.raises(CorruptObject, match="holds"):
        decode_block(struct.pack(">4sBBI", DMAGIC, 1, 1, len(raw)) + z, h, "k", ALGO)


@pytest.mark.parametrize("name", sorted(FRAMED))
def test_framed_every_flip_detected(name):
    data, decode = FRAMED[name]
    assert decode(data, "k") is not None
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            bad = bytearray(data)
            bad[i] ^= bit
            with pytest.raises(CorruptObject, match="^the/key: "):
                decode(bytes(bad), "the/key")


@pytest.mark.parametrize("name", sorted(FRAMED))
def test_framed_truncation_detected(name):
    data, decode = FRAMED[name]
    for n in range(len(data)):
        with pytest.raises(CorruptObject):
            decode(data[:n], "k")
    with pytest.raises(CorruptObject):
        decode(data + b"\0", "k")


def test_framed_specific_damage_messages():
    data = SEAL.encode()
    with pytest.raises(CorruptObject, match="k: bad magic b'FRYB', expected b'FRYJ'"):
        Segment.decode(_sb().encode(), "k")
    with pytest.raises(CorruptObject, match="k: truncated"):
        Segment.decode(data[:20], "k")
    with pytest.raises(CorruptObject, match="k: checksum mismatch"):
        Segment.decode(data[:10] + bytes([data[10] ^ 1]) + data[11:], "k")
    # version 2 with its checksum recomputed: an object from a newer ferry
    newer = _reframe(b"FRYJ", 2, data[5:-32])
    with pytest.raises(CorruptObject, match=r"unsupported format version 2 \(written by a newer ferry\?\)$"):
        Segment.decode(newer, "k")
    # version 2 by a bit flip: still named, and flagged as possibly damaged
    with pytest.raises(CorruptObject, match="version 2 .*newer ferry.*damaged"):
        Segment.decode(data[:4] + b"\x02" + data[5:], "k")
    with pytest.raises(CorruptObject, match="not valid msgpack"):
        Segment.decode(_reframe(b"FRYJ", 1, b"\xc1"), "k")
    with pytest.raises(CorruptObject, match="not valid msgpack"):   # trailing bytes after the body
        Segment.decode(_reframe(b"FRYJ", 1, msgpack.packb({}) + b"\x00"), "k")


@pytest.mark.parametrize("body,msg", [
    ([1, 2], "expected a map"),
    ({"kind": "segment", "epoch": 1, "seq": 1, "created_ns": 0}, "'records' is missing"),
    ({"kind": "segment", "epoch": "1", "seq": 1, "created_ns": 0, "records": []}, "'epoch' is a str"),
    ({"kind": "segment", "epoch": True, "seq": 1, "created_ns": 0, "records": []}, "'epoch' is a bool"),
    ({"kind": "bogus", "epoch": 1, "seq": 1, "created_ns": 0, "records": []}, "unknown segment kind"),
    ({"kind": "segment", "epoch": 0, "seq": 1, "created_ns": 0, "records": []}, ">= 1"),
    ({"kind": "segment", "epoch": 1, "seq": 1, "created_ns": 0, "records": [[1], 5]}, "record 1"),
    ({"kind": "segment", "epoch": 1, "seq": 1, "created_ns": 0, "records": [[]]}, "record 0"),
    ({"kind": "segment", "epoch": 1, "seq": 1, "created_ns": 0, "records": [], "batch": "x"}, "'batch'"),
    ({"kind": "seal", "epoch": 1, "seq": 2, "created_ns": 0, "records": [[1]], "reason": "release",
      "sealed_by": 1}, "seals carry none"),
    ({"kind": "seal", "epoch": 1, "seq": 2, "created_ns": 0, "records": [], "sealed_by": 1}, "no reason"),
    ({"kind": "seal", "epoch": 1, "seq": 2, "created_ns": 0, "records": [], "reason": "release"}, "which epoch"),
])
def test_segment_envelope_validated(body, msg):
    with pytest.raises(CorruptObject, match=msg):
        Segment.decode(frame(b"FRYJ", body), "k")


def test_superblock_values_validated():
    good = Superblock.decode(_sb().encode(), "k").__dict__
    for field, value, msg in [("block_size", 3000, "block_size"), ("block_size", 32 << 20, "block_size"),
                              ("compression", "lz4", "compression"), ("fencing", "none", "fencing"),
                              ("format", 7, "format 7"), ("origins", [{"name": "a"}], "origin"),
                              ("options", {"hash": "sha1"}, "unknown content hash 'sha1'"),
                              ("uuid", "x", "uuid"), ("options", [], "options"),
                              ("options", {"layout": "disk"}, "unknown layout"),
                              ("options", {"layout": "block", "fs": "zfs", "image_size": 1 << 30}, "block layout"),
                              ("options", {"layout": "block", "fs": "ext4", "image_size": 4096}, "block layout"),
                              ("options", {"layout": "block", "fs": "ext4"}, "block layout"),
                              ("options", {"hash": "blake3-keyed"}, "unknown content hash"),
                              ("options", {"hash": "blake3", "encryption": {}}, "encryption needs format 6")]:
        with pytest.raises(CorruptObject, match=msg):
            Superblock.decode(frame(b"FRYB", {**good, field: value}), "k")
    with pytest.raises(CorruptObject, match="content hash 'blake3' for format 3"):
        Superblock.decode(frame(b"FRYB", {**good, "format": 3}), "k")      # older readers would misread it


def test_claim_and_snapshot_bodies_validated():
    c = _claim().__dict__
    with pytest.raises(CorruptObject, match="'takeover' is a int"):
        EpochClaim.decode(frame(b"FRYE", {**c, "takeover": 1}), "k")
    with pytest.raises(CorruptObject, match="epoch 0"):
        EpochClaim.decode(frame(b"FRYE", {**c, "epoch": 0}), "k")
    with pytest.raises(CorruptObject, match="do not decompress"):
        decode_snapshot(frame(b"FRYS", {"epoch": 1, "seq": 1, "next_ino": 2, "z": b"nope"}), "k")
    z = zstandard.ZstdCompressor().compress(msgpack.packb({"a": 1}))
    with pytest.raises(CorruptObject, match="expected a list"):
        decode_snapshot(frame(b"FRYS", {"epoch": 1, "seq": 1, "next_ino": 2, "z": z}), "k")
    z = zstandard.ZstdCompressor().compress(b"\xc1")
    with pytest.raises(CorruptObject, match="not valid msgpack"):
        decode_snapshot(frame(b"FRYS", {"epoch": 1, "seq": 1, "next_ino": 2, "z": z}), "k")


def test_frame_is_generic_and_accepts_buffers():
    data = frame(b"FRYL", {"epoch": 1, "blocks": [[1, 2, b"raw"]]})
    assert unframe(b"FRYL", data, "k") == {"epoch": 1, "blocks": [[1, 2, b"raw"]]}
    assert unframe(b"FRYL", bytearray(data), "k") == unframe(b"FRYL", memoryview(data), "k")
    with pytest.raises(ValueError):
        frame(b"FRY", {})


_DECODERS = [lambda d: Segment.decode(d, "k"), lambda d: Superblock.decode(d, "k"),
             lambda d: EpochClaim.decode(d, "k"), lambda d: decode_snapshot(d, "k"),
             lambda d: decode_block(d, b"\0" * 32, "k", ALGO)]


@given(st.binary(max_size=300))
def test_garbage_is_always_corrupt(data):
    for fn in _DECODERS:
        with pytest.raises(CorruptObject):
            fn(data)


@given(st.sampled_from([b"FRYB", b"FRYE", b"FRYJ", b"FRYS"]), st.binary(max_size=300))
def test_garbage_with_valid_frame_is_always_corrupt(magic, body):
    # Gets past magic, version and checksum, so the msgpack and field checks
    # must hold on their own.
    data = _reframe(magic, 1, body)
    for fn in _DECODERS:
        with pytest.raises(CorruptObject):
            fn(data)


_MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300)
@given(st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["begin", "segment", "seal", "x"]) | _MSGPACK_VALUES,
    "epoch": st.integers(-1, 3) | _MSGPACK_VALUES, "seq": st.integers(-1, 3) | _MSGPACK_VALUES,
    "created_ns": st.integers(0, 9) | _MSGPACK_VALUES, "records": st.lists(st.lists(_MSGPACK_VALUES, max_size=3)),
    "reason": st.sampled_from(["release", None]) | _MSGPACK_VALUES, "sealed_by": _MSGPACK_VALUES,
    "batch": _MSGPACK_VALUES, "z": _MSGPACK_VALUES, "next_ino": _MSGPACK_VALUES}))
def test_plausible_bodies_decode_or_are_corrupt(body):
    """Structured near-misses: decoders either accept or raise CorruptObject."""
    for magic, fn in [(b"FRYJ", Segment.decode), (b"FRYS", decode_snapshot), (b"FRYE", EpochClaim.decode),
                      (b"FRYB", Superblock.decode)]:
        with contextlib.suppress(CorruptObject):
            fn(frame(magic, body), "k")


@given(st.binary(max_size=2000), st.booleans(), st.binary(min_size=1, max_size=40), st.integers(0, 10**6))
def test_block_with_bytes_replaced_is_corrupt(raw, compress, junk, where):
    h, obj = encode_block(raw, compress, ALGO)
    i = where % len(obj)
    bad = obj[:i] + junk + obj[i + len(junk):]
    if bad == obj:
        return
    with pytest.raises(CorruptObject):
        decode_block(bad, h, "k", ALGO)


# ------------------------------------------------------------------- keys

def test_key_layout():
    assert keys.superblock_key("v") == "v/superblock"
    assert keys.epoch_key("v", 1) == "v/epochs/0000000000000001"
    assert keys.journal_key("v", 2, 10) == "v/journal/0000000000000002/000000000000000a"
    assert keys.snapshot_key("v", 2, 10) == "v/snapshots/0000000000000002-000000000000000a"
    h = bytes(range(32))
    assert keys.data_key("v", h) == "v/data/00/" + h.hex()
    assert keys.journal_key("v", 2, 1).startswith(keys.journal_prefix("v", 2))
    assert keys.journal_prefix("v", 2).startswith(keys.journal_prefix("v"))
    assert keys.epoch_key("v", 1).startswith(keys.epochs_prefix("v"))
    assert keys.snapshot_key("v", 1, 1).startswith(keys.snapshots_prefix("v"))
    assert keys.data_key("v", h).startswith(keys.data_prefix("v"))


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), min_size=2, max_size=20))
def test_key_lexical_order_is_numeric_order(pairs):
    for build, parse in [(keys.journal_key, keys.parse_journal_key), (keys.snapshot_key, keys.parse_snapshot_key)]:
        ks = [build("v", e, s) for e, s in pairs]
        assert sorted(ks) == [build("v", e, s) for e, s in sorted(pairs)]
        assert [parse("v", k) for k in ks] == pairs
    eks = [keys.epoch_key("v", e) for e, _ in pairs]
    assert sorted(eks) == [keys.epoch_key("v", e) for e in sorted(e for e, _ in pairs)]
    assert [keys.parse_epoch_key("v", k) for k in eks] == [e for e, _ in pairs]


def test_key_order_small_example():
    ks = [keys.journal_key("v", e, s) for e, s in [(1, 1), (1, 2), (1, 16), (2, 1), (16, 1)]]
    assert ks == sorted(ks)


@pytest.mark.parametrize("n", [-1, 2**64])
def test_key_numbers_out_of_range_refused(n):
    for fn in (lambda: keys.epoch_key("v", n), lambda: keys.journal_key("v", 1, n),
               lambda: keys.snapshot_key("v", n, 1), lambda: keys.journal_prefix("v", n)):
        with pytest.raises(ValueError):
            fn()


def test_data_key_needs_a_32_byte_hash():
    with pytest.raises(ValueError, match="32 bytes"):
        keys.data_key("v", b"\0" * 31)


@pytest.mark.parametrize("key", [
    "v/journal/zz/1", "v/journal/0000000000000001", "v/journal/0000000000000001/",
    "v/journal/0000000000000001/000000000000000A", "v/journal/0000000000000001/0000000000000001/x",
    "v/journal/0000000000000001/0000000000000001.tmp", "w/journal/0000000000000001/0000000000000001",
    "v2/journal/0000000000000001/0000000000000001", "v/journal/000000000000001/00000000000000001",
    "v/journal/+000000000000001/0000000000000001", "v/journal/0000000000000001/ 000000000000001",
])
def test_parse_journal_key_rejects(key):
    assert keys.parse_journal_key("v", key) is None


def test_parse_other_keys_reject_strays():
    h = bytes(range(32)).hex()
    assert keys.parse_epoch_key("v", "v/epochs/1") is None
    assert keys.parse_epoch_key("v", "v/epochs/000000000000000G") is None
    assert keys.parse_epoch_key("v", "v/epochs/0000000000000001/x") is None
    assert keys.parse_snapshot_key("v", "v/snapshots/0000000000000001") is None
    assert keys.parse_snapshot_key("v", "v/snapshots/0000000000000001-0000000000000001-x") is None
    assert keys.parse_snapshot_key("v", "v/snapshots/0000000000000001-0000000000000002") == (1, 2)
    assert keys.parse_data_key("v", f"v/data/00/{h}") == (bytes(range(32)), 0)       # format 1: untagged
    assert keys.parse_data_key("v", f"v/data/00/{h}.000000000000002a") == (bytes(range(32)), 42)
    assert keys.parse_data_key("v", f"v/data/00/{h}.0000000000000000") is None      # epoch 0 has no suffix
    assert keys.parse_data_key("v", f"v/data/00/{h}.2a") is None
    assert keys.data_key("v", bytes(range(32)), 42) == f"v/data/00/{h}.000000000000002a"
    assert keys.parse_data_key("v", f"v/data/01/{h}") is None           # wrong fan-out directory
    assert keys.parse_data_key("v", f"v/data/00/{h.upper()}") is None   # not the canonical spelling
    assert keys.parse_data_key("v", f"v/data/00/{h[:-2]}") is None
    assert keys.parse_data_key("v", f"v/data/{h}") is None
    assert keys.parse_data_key("v", f"v/data/00/{h}/x") is None


@pytest.mark.parametrize("name,msg", [
    ("", "empty"), (".", "not allowed"), ("..", "not allowed"), ("/", "'/'"), ("a/b", "'/'"),
    ("x" * 129, "129 characters"), ("bad\x01name", r"'\\x01'"), ("tab\tname", r"'\\t'"),
    ("nl\n", r"'\\n'"), ("-dash", "must not start with '-'"), (".hidden", "must not start with '.'"),
    ("ünï", "'ü'"), ("a b", "' '"), ("a:b", "':'"), ("a*", "'\\*'"), ("\x00", r"'\\x00'"),
])
def test_bad_volume_names(name, msg):
    with pytest.raises(ValueError, match=msg):
        keys.validate_volume_name(name)


@pytest.mark.parametrize("name", ["data", "pg-main_01", "a.b", "x" * 128, "0", "_x", "a..b", "A-", "v."])
def test_good_volume_names(name):
    keys.validate_volume_name(name)


def test_bad_volume_name_refused_by_mkfs_codec():
    with pytest.raises(ValueError, match="volume name"):
        make_superblock("../x", {}, 0)


def test_incarnation_keys_and_roots():
    assert keys.incarnation_key("demo", 3) == "demo/incarnations/0000000000000003"
    assert keys.parse_incarnation_key("demo", "demo/incarnations/0000000000000003") == 3
    assert keys.parse_incarnation_key("demo", "demo/incarnations/3") is None
    assert keys.parse_incarnation_key("demo", "demox/incarnations/0000000000000003") is None
    root = keys.volume_root("demo", "ab" * 16)
    assert root == "demo/" + "ab" * 16
    # a root never collides with format 1's keys or the incarnation records of its name
    assert not root.startswith(keys.incarnations_prefix("demo"))
    assert not keys.journal_prefix("demo").startswith(root + "/")
    with pytest.raises(ValueError):
        keys.volume_root("demo", "not-a-uuid")


def test_block_records_with_and_without_epoch():
    from fsd.meta.records import BLOCK, RecordError, validate_record
    validate_record([BLOCK, 2, 0, b"h" * 32, 10])          # format 1
    validate_record([BLOCK, 2, 0, b"h" * 32, 10, 7])       # format 2: the object's epoch
    validate_record([BLOCK, 2, 0, b"h" * 32, 10, 7, 1])    # format 3: under origin 1's root (a clone)
    with pytest.raises(RecordError, match="5 to 7"):
        validate_record([BLOCK, 2, 0, b"h" * 32, 10, 7, 1, 1])
    with pytest.raises(RecordError, match="origin index"):
        validate_record([BLOCK, 2, 0, b"h" * 32, 10, 7, 0])
    with pytest.raises(RecordError, match="epoch"):
        validate_record([BLOCK, 2, 0, b"h" * 32, 10, "x"])


def test_claim_purpose_defaults_to_mount_and_rejects_unknown():
    from fsd.format.claim import EpochClaim
    from fsd.format.framing import frame
    c = EpochClaim(epoch=2, host="h", pid=1, token="t", claimed_ns=1, takeover=False)
    assert EpochClaim.decode(c.encode(), "k").purpose == "mount"
    r = EpochClaim(epoch=2, host="h", pid=1, token="t", claimed_ns=1, takeover=True, purpose="remove")
    assert EpochClaim.decode(r.encode(), "k") == r
    old = {"epoch": 2, "host": "h", "pid": 1, "token": "t", "claimed_ns": 1, "takeover": False}
    assert EpochClaim.decode(frame(b"FRYE", old), "k").purpose == "mount"       # format 1 claims
    with pytest.raises(CorruptObject, match="purpose"):
        EpochClaim.decode(frame(b"FRYE", {**old, "purpose": "explode"}), "k")


def test_block_layout_is_format_4_and_files_stays_format_3():
    sb = make_superblock("v", {"layout": "block", "size": "1000000000", "hash": "blake2b"}, 1)
    assert (sb.format, sb.layout, sb.block_fs, sb.image_size) == (4, "block", "ext4", 1000000000 - 1000000000 % 4096)
    back = Superblock.decode(sb.encode(), "k")
    assert (back.layout, back.block_fs, back.image_size) == ("block", "ext4", sb.image_size)
    sb = make_superblock("v", {"layout": "block", "fs": "xfs"}, 1)
    assert (sb.block_fs, sb.image_size) == ("xfs", 10 << 30)
    files = make_superblock("v", {"hash": "blake2b"}, 1)
    assert (files.format, files.layout) == (3, "files") and "layout" not in files.options
