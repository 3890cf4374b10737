"""Journal records: exact shapes of docs/format.md, round trip, and garbage
always rejected as RecordError (never another exception type)."""
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsd.meta.records import (
    BLOCK,
    DENT,
    DENT_DEL,
    INODE,
    INODE_DEL,
    TRUNC,
    XATTR,
    XATTR_DEL,
    RecordError,
    decode_records,
    encode_records,
    validate_record,
)

H = bytes(range(32))
GOOD = [
    [INODE, 1, 0o40755, 0, 0, 2, 0, 1, 2, 3, 0, None],
    [INODE, 7, 0o120777, 1000, 1000, 1, 3, -5, 0, 2**63 - 1, 0, b"a/b"],
    [INODE_DEL, 7],
    [DENT, 1, b"name\xff", 7, 1],
    [DENT_DEL, 1, b"name"],
    [BLOCK, 7, 0, H, 4096],
    [TRUNC, 7, 0],
    [XATTR, 7, b"user.x", b""],
    [XATTR_DEL, 7, b"user.x"],
]


def test_type_numbers_are_the_format():
    assert tuple(range(1, 9)) == (INODE, INODE_DEL, DENT, DENT_DEL, BLOCK, TRUNC, XATTR, XATTR_DEL)


def test_round_trip_every_type():
    data = encode_records(GOOD)
    back = decode_records(data)
    assert back == GOOD
    assert type(back[3][2]) is bytes and type(back[1][11]) is bytes and back[0][11] is None


def test_empty_list_round_trips():
    assert decode_records(encode_records([])) == []


@pytest.mark.parametrize("rec,msg", [
    ([], "empty"),
    ((INODE_DEL, 1), "array"),
    ([99, 1], "unknown record type"),
    (["1", 1], "unknown record type"),
    ([True, 1], "unknown record type"),
    ([INODE_DEL], "has 1 elements"),
    ([INODE_DEL, 1, 2], "expected 2"),
    ([INODE_DEL, 0], "ino"),
    ([INODE_DEL, True], "ino"),
    ([INODE_DEL, 1.0], "ino"),
    ([INODE, 2, -1, 0, 0, 1, 0, 0, 0, 0, 0, None], "mode"),
    ([INODE, 2, 0o100644, 0, 0, 1, -1, 0, 0, 0, 0, None], "size"),
    ([INODE, 2, 0o100644, 0, 0, 1, 0, 0, 0, 0, 0, "str"], "target"),
    ([DENT, 1, "str", 2, 1], "name"),
    ([DENT, 1, b"", 2, 1], "name"),
    ([DENT, 1, b"a/b", 2, 1], "name"),
    ([DENT, 1, b"..", 2, 1], "name"),
    ([DENT, 1, b"x" * 256, 2, 1], "name"),
    ([DENT, 1, b"a", 2, 0], "cookie"),
    ([BLOCK, 2, 0, b"short", 1], "hash"),
    ([BLOCK, 2, -1, H, 1], "index"),
    ([TRUNC, 2, -1], "size"),
    ([XATTR, 2, b"", b"v"], "xattr name"),
    ([XATTR, 2, b"n", b"v" * 65537], "value"),
    ([XATTR_DEL, 2, None], "xattr name"),
])
def test_validate_names_the_problem(rec, msg):
    with pytest.raises(RecordError, match=msg):
        validate_record(rec)


def test_decode_rejects_wrong_nesting_and_trailing_data():
    for bad in [msgpack.packb({"a": 1}), msgpack.packb([[INODE_DEL, 1], 5]),
                msgpack.packb([[[INODE_DEL, 1]]]), encode_records(GOOD) + b"\x01", b"",
                b"\xc1", msgpack.packb([[DENT, 1, "text", 2, 1]], use_bin_type=True),
                b"\x91\x92\x03\xa2\xff\xfe"]:   # invalid utf-8 str
        with pytest.raises(RecordError):
            decode_records(bad)


def test_decode_error_says_which_record():
    with pytest.raises(RecordError, match=r"record #1: TRUNC"):
        decode_records(encode_records([[INODE_DEL, 1], [TRUNC, 1, -3]]))


def test_encode_refuses_unencodable():
    with pytest.raises(RecordError):
        encode_records([[INODE_DEL, object()]])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_give_record_error_or_valid_records(data):
    try:
        recs = decode_records(data)
    except RecordError:
        return
    for r in recs:
        validate_record(r)


_leaf = (st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64)
         | st.floats(allow_nan=True) | st.text(max_size=4) | st.binary(max_size=40))
_tree = st.recursive(_leaf, lambda c: st.lists(c, max_size=13) | st.dictionaries(st.text(max_size=3), c,
                                                                                    max_size=3),
                     max_leaves=30)
_near = st.lists(st.integers(1, 8).flatmap(
    lambda t: st.lists(_leaf, min_size=1, max_size=12).map(lambda rest: [t] + rest)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_tree, _near))
def test_random_structures_give_record_error_or_valid_records(obj):
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    try:
        recs = decode_records(data)
    except RecordError:
        return
    assert isinstance(recs, list)
    for r in recs:
        validate_record(r)
