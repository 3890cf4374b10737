"""fsd/tools/inventory.py: what a store holds, read back as the control service
records it (volumes, options, snapshots, clone links, removals in progress),
without writing a byte. Volumes are made with the real CLI on a real
`file://` store (and on moto's S3); removals are left half done with the
functions `ferry fs rm` runs."""
from __future__ import annotations

import json
import stat
import time

import pytest

from control.validate import validate_volume_options
from fsd.backup import history
from fsd.backup.clones import parse_source
from fsd.format import keys
from fsd.format.pin import Pin
from fsd.format.segment import Segment
from fsd.format.superblock import Superblock, make_superblock
from fsd.lifecycle import removal
from fsd.meta.records import DENT, INODE
from fsd.meta.state import new_volume_records
from fsd.store import open_store
from fsd.tools.inventory import (
    Inventory,
    InventoryError,
    RemovalInfo,
    SnapshotInfo,
    VolumeInfo,
    list_names,
    read_inventory,
    read_volume,
)
from fsd.volume import objects as vol_mod
from tests.helpers.mount import run_ferry


def ferry_ok(*args: str) -> str:
    r = run_ferry(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture
def file_store(file_store_url):
    s = open_store(file_store_url)
    try:
        yield s
    finally:
        s.close()


def everything(store) -> list[tuple[str, int, int]]:
    """(key, size, mtime) of every object: a write of any kind changes it."""
    return [(o.key, o.size, o.mtime_ns) for o in store.list_info("")]


def inventory_read_only(store, **kw) -> Inventory:
    before = everything(store)
    inv = read_inventory(store, **kw)
    assert everything(store) == before, "read_inventory wrote to the store"
    return inv


def snapshot_ls(url: str, volume: str) -> dict[str, list[int]]:
    """name -> position, as `ferry fs snapshot ls --json` reports them (ready ones)."""
    out = json.loads(ferry_ok("fs", "snapshot", "ls", "--store", url, volume, "--json"))
    return {s["name"]: s["position"] for s in out if s["state"] == "ready"}


def root_of(store, name: str) -> str:
    return vol_mod.locate(store, name)[0].root


def add_commit(store, name: str, records: list) -> tuple[int, int]:
    """One committed segment in a new epoch of `name` (as a mount that
    writes and unmounts would leave), without FUSE: claim, segment, seal."""
    root = root_of(store, name)
    epoch, _ = vol_mod.claim_epoch(store, root, cache_tokens=(), takeover=False)
    seg = Segment(kind="segment", epoch=epoch, seq=2, created_ns=time.time_ns(), records=records)
    store.put(keys.journal_key(root, epoch, 2), seg.encode(), if_none_match=True)
    vol_mod.seal_epoch(store, root, epoch, sealed_by=epoch, reason="release", next_seq=3)
    return epoch, 2


def file_records(ino: int, name: bytes, size: int, cookie: int) -> list:
    now = time.time_ns()
    return [[INODE, ino, stat.S_IFREG | 0o600, 0, 0, 1, size, now, now, now, 0, None],
            [DENT, 1, name, ino, cookie]]


def by_name(inv: Inventory) -> dict[str, VolumeInfo]:
    return {v.name: v for v in inv.volumes}


# ---------------------------------------------------------------- the whole store


def test_inventory_lists_volumes_options_snapshots_clones_and_removals(file_store_url, file_store):
    url, store = file_store_url, file_store
    t0 = time.time()
    # Volumes of every kind, with options as users give them.
    ferry_ok("fs", "mkfs", "--store", url, "v1", "-o", "compression=zstd")
    ferry_ok("fs", "snapshot", "create", "--store", url, "v1", "s1")
    add_commit(store, "v1", file_records(2, b"a", 10, 1))
    ferry_ok("fs", "snapshot", "create", "--store", url, "v1", "s2")
    add_commit(store, "v1", file_records(3, b"b", 20, 2))
    ferry_ok("fs", "mkfs", "--store", url, "c1", "--from", "v1@s1")
    ferry_ok("fs", "mkfs", "--store", url, "c1b", "--from", "v1@s2", "-o", "compression=none", "-o", "history=2h")
    ferry_ok("fs", "mkfs", "--store", url, "v2", "-o", "block_size=256k", "-o", "history=0", "-o", "hash=blake2b")
    add_commit(store, "v2", file_records(2, b"x", 5, 1))
    ferry_ok("fs", "mkfs", "--store", url, "c2", "--from", "v2")          # as last committed: a moment
    ferry_ok("fs", "mkfs", "--store", url, "b1", "-o", "layout=block", "-o", "size=64M")
    ferry_ok("fs", "mkfs", "--store", url, "bx", "-o", "layout=block", "-o", "size=300M", "-o", "fs=xfs",
             "-o", "compression=zstd")
    # Removals: marked only; first phase deleted (as if killed mid-way);
    # everything deleted but the incarnation record; finished (gone).
    for name in ("r1", "r2", "r3", "gone", "again"):
        ferry_ok("fs", "mkfs", "--store", url, name)
    r1 = removal.begin_removal(store, "r1")
    r2 = removal.begin_removal(store, "r2")

    def die_after_first_phase(done: int, total: int, nbytes: int) -> None:
        if done:
            raise RuntimeError("killed")
    with pytest.raises(RuntimeError):
        removal.delete_volume(store, r2, progress=die_after_first_phase)
    assert store.head(keys.superblock_key(r2.root)) is not None
    r3 = removal.begin_removal(store, "r3")
    store.delete_many(list(store.list(r3.root + "/")))
    assert store.head(keys.incarnation_key("r3", r3.incarnation)) is not None
    ferry_ok("fs", "rm", "--store", url, "gone")
    # A name removed (not yet deleted) and created again: a live volume and a removal.
    old_again = removal.begin_removal(store, "again")
    ferry_ok("fs", "mkfs", "--store", url, "again", "-o", "compression=zstd")
    t1 = time.time()

    calls: list[tuple[int, int]] = []
    inv = inventory_read_only(store, progress=lambda done, total: calls.append((done, total)))

    assert inv.problems == ()
    vols = by_name(inv)
    assert [v.name for v in inv.volumes] == ["again", "b1", "bx", "c1", "c1b", "c2", "v1", "v2"]
    for v in inv.volumes:
        assert v.root == root_of(store, v.name)
        assert t0 - 1 <= v.created <= t1 + 1
        validate_volume_options(v.name, v.options)           # the control service accepts them
    assert vols["v1"].options == {"compression": "zstd"}
    assert vols["v2"].options == {"block_size": "256K", "history": "0", "hash": "blake2b"}
    assert vols["b1"].options == {"layout": "block", "fs": "ext4", "size": "64M"}
    assert vols["bx"].options == {"layout": "block", "fs": "xfs", "size": "300M", "compression": "zstd"}
    assert vols["again"].options == {"compression": "zstd"}
    assert vols["again"].root != old_again.root
    # Snapshots: names and positions exactly as `ferry fs snapshot ls` shows them.
    ls = snapshot_ls(url, "v1")
    assert set(ls) == {"s1", "s2"} and ls["s1"] != ls["s2"]
    assert {s.name: s.position for s in vols["v1"].snapshots} == ls
    assert [s.name for s in vols["v1"].snapshots] == ["s1", "s2"]
    assert all(isinstance(s, SnapshotInfo) and t0 - 1 <= s.created <= t1 + 1 for s in vols["v1"].snapshots)
    for name in ("v2", "c1", "c2", "b1", "again"):
        assert vols[name].snapshots == ()
    # Clones: origin and an equivalent from=.
    assert vols["c1"].origin == "v1" and vols["c1"].options == {"from": "v1@s1"}
    assert vols["c1b"].origin == "v1" and vols["c1b"].options == {"from": "v1@s2", "compression": "none",
                                                                 "history": "2h"}
    assert vols["c2"].origin == "v2" and set(vols["c2"].options) == {"from"}
    for name in ("v1", "v2", "b1", "bx", "again"):
        assert vols[name].origin is None
    src = parse_source(vols["c2"].options["from"], time.time_ns())
    assert src.volume == "v2" and src.at_ns is not None
    v2_ref, v2_sb = vol_mod.locate(store, "v2")
    c2_sb = vol_mod.read_superblock(store, vol_mod.locate(store, "c2")[0])
    pos, _state, _n = history.state_at(store, v2_ref.root, v2_sb, src.at_ns)
    assert pos == c2_sb.origins[0].position == (2, 2)      # that moment is exactly the state c2 was made from
    # Removals in progress, by root; the finished one is nowhere.
    assert inv.removals == tuple(sorted([RemovalInfo("r1", r1.root), RemovalInfo("r2", r2.root),
                                         RemovalInfo("r3", r3.root), RemovalInfo("again", old_again.root)],
                                        key=lambda r: r.root))
    assert "gone" not in vols and all(r.name != "gone" for r in inv.removals)
    # Progress: from 0 to every name of the store.
    names = list_names(store)
    assert calls[0] == (0, len(names)) and calls[-1] == (len(names), len(names))
    assert [d for d, _ in calls] == list(range(len(names) + 1))

    # Finishing the removals leaves only the live volumes.
    for name in ("r1", "r2", "r3", "again"):
        ferry_ok("fs", "rm", "--store", url, name)
    inv2 = inventory_read_only(store)
    assert [v.name for v in inv2.volumes] == ["b1", "bx", "c1", "c1b", "c2", "v1", "v2"]
    assert inv2.removals == () and inv2.problems == ()


def test_read_volume_one_name(file_store_url, file_store):
    url, store = file_store_url, file_store
    ferry_ok("fs", "mkfs", "--store", url, "v1", "-o", "history=30m")
    ferry_ok("fs", "snapshot", "create", "--store", url, "v1", "nightly")
    ferry_ok("fs", "mkfs", "--store", url, "c1", "--from", "v1@nightly")
    ferry_ok("fs", "mkfs", "--store", url, "dead")
    removal.begin_removal(store, "dead")
    before = everything(store)
    v = read_volume(store, "v1")
    assert v == by_name(read_inventory(store))["v1"]
    assert v.options == {"history": "30m"} and v.origin is None
    assert [(s.name, s.position) for s in v.snapshots] == [("nightly", snapshot_ls(url, "v1")["nightly"])]
    c = read_volume(store, "c1")
    assert c.origin == "v1" and c.options == {"from": "v1@nightly"}
    assert read_volume(store, "nosuch") is None
    assert read_volume(store, "dead") is None             # being removed: not a live volume
    with pytest.raises(ValueError):
        read_volume(store, "../etc")
    assert everything(store) == before


# ---------------------------------------------------------------- what is unreadable


def test_unreadable_objects_are_problems_not_failures(file_store_url, file_store):
    url, store = file_store_url, file_store
    for name in ("a", "bad", "z"):
        ferry_ok("fs", "mkfs", "--store", url, name)
    ferry_ok("fs", "snapshot", "create", "--store", url, "a", "good")
    ferry_ok("fs", "snapshot", "create", "--store", url, "a", "broken")
    ferry_ok("fs", "mkfs", "--store", url, "badinc")
    bad_root = root_of(store, "bad")
    store.put(keys.superblock_key(bad_root), b"FRYB\x05 not a superblock")
    store.put(keys.pin_key(root_of(store, "a"), "snap", "broken"), b"garbage")
    store.put(keys.incarnation_key("badinc", 1), b"garbage")

    inv = inventory_read_only(store)

    assert [v.name for v in inv.volumes] == ["a", "z"]
    assert [s.name for s in by_name(inv)["a"].snapshots] == ["good"]
    assert inv.removals == ()
    assert len(inv.problems) == 3, inv.problems
    assert any("'bad'" in p and keys.superblock_key(bad_root) in p for p in inv.problems)
    assert any("'a'" in p and "broken" in p for p in inv.problems)
    assert any("'badinc'" in p and "incarnation" in p for p in inv.problems)
    with pytest.raises(InventoryError, match="superblock"):
        read_volume(store, "bad")
    with pytest.raises(InventoryError, match="incarnation"):
        read_volume(store, "badinc")
    assert read_volume(store, "z") is not None


def test_pending_snapshot_is_left_out_with_a_note(file_store_url, file_store):
    url, store = file_store_url, file_store
    ferry_ok("fs", "mkfs", "--store", url, "v1")
    root = root_of(store, "v1")
    store.put(keys.pin_key(root, "snap", "half"), Pin("snap", "half", "pending", (1, 2), time.time_ns()).encode())
    inv = inventory_read_only(store)
    assert by_name(inv)["v1"].snapshots == ()
    assert len(inv.problems) == 1 and "half" in inv.problems[0] and "pending" in inv.problems[0]


# ---------------------------------------------------------------- special cases


def test_removed_origin_held_by_its_clone(file_store_url, file_store):
    """An origin removed while a clone shares its data stays (in part) until
    the clone goes: a removal held by that clone's root."""
    url, store = file_store_url, file_store
    ferry_ok("fs", "mkfs", "--store", url, "orig")
    ferry_ok("fs", "snapshot", "create", "--store", url, "orig", "s")
    ferry_ok("fs", "mkfs", "--store", url, "kid", "--from", "orig@s")
    orig_root, kid_root = root_of(store, "orig"), root_of(store, "kid")
    ferry_ok("fs", "rm", "--store", url, "orig")

    inv = inventory_read_only(store)
    assert [v.name for v in inv.volumes] == ["kid"]
    kid = inv.volumes[0]
    assert kid.origin == "orig" and kid.options["from"].startswith("orig@")
    validate_volume_options("kid", kid.options)
    assert inv.removals == (RemovalInfo("orig", orig_root, (kid_root,)),)
    assert any("'kid'" in p and "removed" in p for p in inv.problems)

    ferry_ok("fs", "rm", "--store", url, "kid")         # lets go of orig, which is then deleted too
    inv = inventory_read_only(store)
    assert inv == Inventory((), (), ())


def test_forced_removal_leaves_seals_but_no_volume(file_store_url, file_store):
    """A removal that fenced a live owner keeps that owner's seal for good:
    the root still has an object, but the volume is gone, not being removed."""
    url, store = file_store_url, file_store
    ferry_ok("fs", "mkfs", "--store", url, "v1")
    root = root_of(store, "v1")
    vol_mod.claim_epoch(store, root, cache_tokens=(), takeover=False)      # a mount that never released
    ferry_ok("fs", "rm", "--store", url, "v1", "--force")
    assert list(store.list(root + "/")), "the fencing seal should outlive the removal"
    inv = inventory_read_only(store)
    assert inv == Inventory((), (), ())
    assert read_volume(store, "v1") is None


def test_block_volume_size_is_its_image_size(file_store_url, file_store):
    """A block volume grown after mkfs (ferry volume resize) has the size of
    its image file, not the one its superblock was made with."""
    url, store = file_store_url, file_store
    ferry_ok("fs", "mkfs", "--store", url, "b1", "-o", "layout=block", "-o", "size=64M")
    add_commit(store, "b1", file_records(2, b"image", 64 << 20, 1))         # the first mount's image
    assert read_volume(store, "b1").options["size"] == "64M"
    add_commit(store, "b1", file_records(2, b"image", 192 << 20, 1))        # grown
    ferry_ok("fs", "snapshot", "create", "--store", url, "b1", "after")     # a metadata snapshot too
    ferry_ok("fs", "mkfs", "--store", url, "bc", "--from", "b1@after")
    inv = inventory_read_only(store)
    assert inv.problems == ()
    b1, bc = by_name(inv)["b1"], by_name(inv)["bc"]
    assert b1.options == {"layout": "block", "fs": "ext4", "size": "192M"}
    assert bc.options == {"from": "b1@after", "size": "192M"} and bc.origin == "b1"
    for v in (b1, bc):
        validate_volume_options(v.name, v.options)


def test_format1_volume(file_store):
    """A format-1 volume (everything under NAME/, no incarnation record) is
    listed with its bare name as root; it has the old hash and no history."""
    store = file_store
    now = time.time_ns()
    sb = make_superblock("old", {"hash": "blake2b"}, now)
    sb.format, sb.options = 1, {}
    vol_mod.write_root(store, "old", sb, new_volume_records(now))
    assert Superblock.decode(store.get("old/superblock"), "old/superblock").format == 1
    inv = inventory_read_only(store)
    assert inv.problems == () and inv.removals == ()
    assert inv.volumes == (VolumeInfo("old", "old", {"hash": "blake2b", "history": "0"}, now / 1e9, (), None),)
    validate_volume_options("old", inv.volumes[0].options)
    removal.begin_removal(store, "old")
    inv = inventory_read_only(store)
    assert inv.volumes == () and inv.removals == (RemovalInfo("old", "old"),)


def test_list_names_around_the_separator(file_store_url, file_store):
    """Names that sort around '/' ("v-x" < "v.x" < "v/..." < "v0"): each
    listed once, with one LIST per name; other top-level keys are no volume."""
    url, store = file_store_url, file_store
    names = ["v", "v-x", "v.x", "v0", "v_", "vz", "_v"]
    for n in names:
        ferry_ok("fs", "mkfs", "--store", url, n)
    ferry_ok("fs", "snapshot", "create", "--store", url, "v", "s")
    store.put("_probe/cond-0123", b"x")
    store.put("stray", b"x")
    for k in ("v/~stray", "-bad/x", "-bad/~y", "v0/\u00e9t\u00e9"):     # keys ferry never writes
        store.put(k, b"x")
    assert list_names(store) == sorted(names + ["_probe"])
    assert [v.name for v in inventory_read_only(store).volumes] == sorted(names)


# ---------------------------------------------------------------- S3


def test_inventory_on_s3(s3_store_url):
    url = s3_store_url
    ferry_ok("fs", "mkfs", "--store", url, "v1", "-o", "compression=zstd", "-o", "history=1d")
    ferry_ok("fs", "snapshot", "create", "--store", url, "v1", "s1")
    ferry_ok("fs", "mkfs", "--store", url, "v1-c", "--from", "v1@s1")
    ferry_ok("fs", "mkfs", "--store", url, "b1", "-o", "layout=block", "-o", "size=1G")
    ferry_ok("fs", "mkfs", "--store", url, "r1")
    ferry_ok("fs", "mkfs", "--store", url, "gone")
    ferry_ok("fs", "rm", "--store", url, "gone")
    store = open_store(url)
    try:
        r1 = removal.begin_removal(store, "r1")
        inv = inventory_read_only(store)
        assert inv.problems == ()
        assert [v.name for v in inv.volumes] == ["b1", "v1", "v1-c"]
        vols = by_name(inv)
        assert vols["v1"].options == {"compression": "zstd", "history": "1d"}
        assert {s.name: s.position for s in vols["v1"].snapshots} == snapshot_ls(url, "v1")
        assert vols["v1-c"].options == {"from": "v1@s1"} and vols["v1-c"].origin == "v1"
        assert vols["b1"].options == {"layout": "block", "fs": "ext4", "size": "1G"}
        for v in inv.volumes:
            validate_volume_options(v.name, v.options)
            assert v.root == root_of(store, v.name)
        assert inv.removals == (RemovalInfo("r1", r1.root),)
        assert read_volume(store, "v1") == vols["v1"]
        assert read_volume(store, "r1") is None and read_volume(store, "gone") is None
    finally:
        store.close()


def test_data_objects_are_stepped_over_not_listed(file_store_url, file_store):
    """The inventory never holds a listing of data objects (millions in a big
    store): each volume's data/ range is skipped with one new listing."""
    from fsd.tools.inventory import _metadata_listing
    for name in ("a", "b"):
        assert run_ferry("fs", "mkfs", "--store", file_store_url, name).returncode == 0
    ref = vol_mod.live_volume(file_store, "a")
    for i in range(50):
        file_store.put(f"{ref.root}/data/{i:02x}/{i:064x}.0000000000000001", b"x")
    file_store.put("legacy/data/00/" + "0" * 64, b"x")          # a format-1 volume's data key
    listed = [o.key for o in _metadata_listing(file_store)]
    assert not [k for k in listed if "/data/" in k], listed
    assert {k.split("/")[0] for k in listed} >= {"a", "b"}
    inv = read_inventory(file_store)
    assert [v.name for v in inv.volumes] == ["a", "b"]
