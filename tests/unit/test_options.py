import pytest

from fsd.datapath.data import split_range
from fsd.options import MountOptions, parse_kv, parse_mount_options, parse_size


def test_defaults():
    o = parse_mount_options({})
    assert o == MountOptions()
    assert o.durability == "remote" and o.commit_interval == 5.0


@pytest.mark.parametrize("text,val", [("4096", 4096), ("64k", 65536), ("1M", 1 << 20), ("10GiB", 10 << 30)])
def test_parse_size(text, val):
    assert parse_size(text) == val


@pytest.mark.parametrize("kv,msg", [
    ({"bogus": "1"}, "unknown mount option"),
    ({"durability": "cloud"}, "durability must be"),
    ({"commit_interval": "soon"}, "commit_interval"),
    ({"cache_size": "lots"}, "not a size"),
    ({"dirty_limit": "1k"}, "at least 1M"),
])
def test_bad_options_are_refused_with_a_reason(kv, msg):
    with pytest.raises(ValueError, match=msg):
        parse_mount_options(kv)


def test_unknown_option_lists_known_ones():
    with pytest.raises(ValueError, match="durability=remote"):
        parse_mount_options({"nope": "1"})


def test_parse_kv_accepts_comma_lists():
    assert parse_kv(["a=1,b=2", "c=x=y"]) == {"a": "1", "b": "2", "c": "x=y"}
    with pytest.raises(ValueError):
        parse_kv(["novalue"])


def test_split_range():
    assert list(split_range(0, 10, 4)) == [(0, 0, 4), (1, 0, 4), (2, 0, 2)]
    assert list(split_range(5, 2, 4)) == [(1, 1, 2)]
    assert list(split_range(3, 2, 4)) == [(0, 3, 1), (1, 0, 1)]
    assert list(split_range(7, 0, 4)) == []


def test_readahead_option():
    assert parse_mount_options({}).readahead == 4 << 20
    assert parse_mount_options({"readahead": "0"}).readahead == 0
    assert parse_mount_options({"readahead": "16M"}).readahead == 16 << 20
    with pytest.raises(ValueError, match="at most 256M"):
        parse_mount_options({"readahead": "1G"})


def test_every_option_comes_from_the_one_table():
    """Defaults, parsers and help are one table (the dataclass's fields): nothing to keep in step by hand."""
    from dataclasses import fields

    from fsd.options import KNOWN, MountOptions, parse_mount_options
    names = [f.name for f in fields(MountOptions)]
    assert list(KNOWN) == names
    for f in fields(MountOptions):
        assert callable(f.metadata["parse"]) and "default" in f.metadata["help"], f.name
    assert parse_mount_options({}) == MountOptions()
    assert parse_mount_options({"gc": "off", "gc_interval": "2m", "readahead": "0"}) == MountOptions(
        gc=False, gc_interval=120.0, readahead=0)
