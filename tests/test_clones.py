"""Clones (issue 9): `ferry fs mkfs NEW --from VOLUME@SNAP|@TIME`. Real
mounts, both stores: a clone reads its origin's bytes without copying
them, writes to either never show in the other, and removing the origin
(with GC run) never breaks the clone; a failed or killed clone leaves
nothing visible and nothing that GC does not clean."""
from __future__ import annotations

import hashlib
import os
import signal

import pytest

from fsd.format import keys
from fsd.format.pin import PENDING_TIMEOUT_NS, Pin
from fsd.store import open_store
from fsd.volume import objects as vol_mod
from tests.helpers.mount import fsck_clean, run_ferry, tree_snapshot, write_fsync

BIG = 3 * (1 << 20) + 12345          # several blocks, a partial last one


def pattern(seed: str, n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def ferry_ok(*args: str, env: dict | None = None) -> str:
    r = run_ferry(*args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def objects(store_url: str, prefix: str) -> list[str]:
    store = open_store(store_url)
    try:
        return list(store.list(prefix))
    finally:
        store.close()


def root_of(store_url: str, name: str) -> str:
    store = open_store(store_url)
    try:
        return vol_mod.locate(store, name)[0].root
    finally:
        store.close()


def fill(mp) -> None:
    write_fsync(mp / "big", pattern("big", BIG))
    (mp / "dir").mkdir()
    write_fsync(mp / "dir" / "small", b"small file\n")
    os.symlink("dir/small", mp / "link")
    os.link(mp / "big", mp / "big.hard")
    os.setxattr(mp / "dir" / "small", "user.k", b"v")
    os.sync()


def test_a_clone_is_independent_of_its_origin_both_ways(store_url, new_mount):
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(store_url, "orig")
    a.mount(store_url, "orig")
    fill(a.mountpoint)
    ferry_ok("fs", "snapshot", "create", "--store", store_url, "orig", "s1", env={"FERRY_RUN_DIR": str(a.run_dir)})
    before = tree_snapshot(a.mountpoint)
    data_before = objects(store_url, keys.data_prefix(root_of(store_url, "orig")))

    out = ferry_ok("fs", "mkfs", "--store", store_url, "copy", "--from", "orig@s1")
    assert "clone of snapshot 's1' of 'orig'" in out
    assert objects(store_url, keys.data_prefix(root_of(store_url, "copy"))) == []     # nothing copied
    b.mount(store_url, "copy")
    assert tree_snapshot(b.mountpoint) == before
    assert (b.mountpoint / "big").read_bytes() == pattern("big", BIG)

    # clone -> origin: never
    with open(b.mountpoint / "big", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"CLONE" * 1000)
        f.flush()
        os.fsync(f.fileno())
    write_fsync(b.mountpoint / "only-in-clone", b"c")
    (b.mountpoint / "dir" / "small").unlink()
    # origin -> clone: never
    write_fsync(a.mountpoint / "dir" / "small", b"origin rewrote it\n")
    write_fsync(a.mountpoint / "only-in-origin", b"o")
    a.umount()
    b.umount()
    a.mount(store_url, "orig")
    b.mount(store_url, "copy")
    assert (a.mountpoint / "big").read_bytes() == pattern("big", BIG)
    assert not (a.mountpoint / "only-in-clone").exists()
    assert (a.mountpoint / "dir" / "small").read_bytes() == b"origin rewrote it\n"
    expected = bytearray(pattern("big", BIG))
    expected[1 << 20:(1 << 20) + 5000] = b"CLONE" * 1000
    assert (b.mountpoint / "big").read_bytes() == bytes(expected)
    assert (b.mountpoint / "big.hard").read_bytes() == bytes(expected)
    assert not (b.mountpoint / "dir" / "small").exists()
    assert not (b.mountpoint / "only-in-origin").exists()
    a.umount()
    b.umount()
    # the clone wrote under its own root only; the origin's objects are the same
    assert set(data_before) <= set(objects(store_url, keys.data_prefix(root_of(store_url, "orig"))))
    fsck_clean(store_url, "orig")
    fsck_clean(store_url, "copy")


def test_a_blake2b_volume_mounts_clones_and_exports_under_format_5(file_store_url, new_mount):
    """Volumes made before format 5 (BLAKE2b content hashes) keep working:
    mount, write, read back, clone (the clone keeps the origin's hash, so it
    can read the origin's blocks by their names) and fsck with data checks."""
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(file_store_url, "old", ["hash=blake2b"])
    store = open_store(file_store_url)
    try:
        assert vol_mod.read_superblock(store, vol_mod.locate(store, "old")[0]).format == 3
    finally:
        store.close()
    a.mount(file_store_url, "old")
    fill(a.mountpoint)
    ferry_ok("fs", "snapshot", "create", "--store", file_store_url, "old", "s1",
             env={"FERRY_RUN_DIR": str(a.run_dir)})
    r = run_ferry("fs", "mkfs", "--store", file_store_url, "c2", "--from", "old@s1", "-o", "hash=blake3")
    assert r.returncode in (1, 2) and "content hash" in r.stderr, r.stderr
    ferry_ok("fs", "mkfs", "--store", file_store_url, "copy", "--from", "old@s1")
    b.mount(file_store_url, "copy")
    assert (b.mountpoint / "big").read_bytes() == pattern("big", BIG)
    write_fsync(b.mountpoint / "new", pattern("new", BIG))
    a.umount()
    b.umount()
    b.mount(file_store_url, "copy")
    assert (b.mountpoint / "new").read_bytes() == pattern("new", BIG)
    b.umount()
    store = open_store(file_store_url)
    try:
        assert vol_mod.read_superblock(store, vol_mod.locate(store, "copy")[0]).content_hash == "blake2b"
    finally:
        store.close()
    for vol in ("old", "copy"):
        verdict = ferry_ok("fs", "fsck", "--store", file_store_url, "--verify-data", vol).splitlines()[-1]
        assert verdict.startswith("clean"), verdict


def test_removing_the_origin_and_running_gc_never_breaks_a_clone(store_url, new_mount):
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(store_url, "orig", options=["history=0"])
    a.mount(store_url, "orig")
    fill(a.mountpoint)
    ferry_ok("fs", "snapshot", "create", "--store", store_url, "orig", "s1", env={"FERRY_RUN_DIR": str(a.run_dir)})
    ferry_ok("fs", "mkfs", "--store", store_url, "copy", "--from", "orig@s1")
    ferry_ok("fs", "mkfs", "--store", store_url, "copy2", "--from", "copy")         # a clone of the clone
    expected = tree_snapshot(a.mountpoint)
    # The origin moves on: rewrites and deletes everything the clones share.
    write_fsync(a.mountpoint / "big", pattern("new", BIG))
    (a.mountpoint / "big.hard").unlink()
    a.umount()
    orig_root = root_of(store_url, "orig")
    ferry_ok("fs", "snapshot", "rm", "--store", store_url, "orig", "s1")
    ferry_ok("fs", "gc", "--store", store_url, "orig", "--grace", "0")
    ferry_ok("fs", "rm", "--store", store_url, "orig")
    assert objects(store_url, keys.data_prefix(orig_root))       # what the clones share is kept
    store = open_store(store_url)
    try:
        assert vol_mod.live_volume(store, "orig") is None
    finally:
        store.close()
    for name in ("copy", "copy2"):
        b.mount(store_url, name)
        assert tree_snapshot(b.mountpoint) == expected, name
        assert (b.mountpoint / "big").read_bytes() == pattern("big", BIG)
        b.umount()
        fsck_clean(store_url, name)
    # The origin's rest goes with its last clone (through the clone of the clone).
    ferry_ok("fs", "rm", "--store", store_url, "copy")
    b.mount(store_url, "copy2")
    assert (b.mountpoint / "big").read_bytes() == pattern("big", BIG)
    b.umount()
    assert objects(store_url, keys.data_prefix(orig_root))
    ferry_ok("fs", "rm", "--store", store_url, "copy2")
    left = [k for k in objects(store_url, "") if not k.startswith(".ferry")]
    assert left == [], left


def test_clone_errors_are_clear_and_create_nothing(file_store_url, new_mount):
    a = new_mount("a")
    a.mkfs(file_store_url, "orig")
    cases = {
        "nope@s1": "does not exist",
        "orig@nosuch": "no ready snapshot 'nosuch'",
        "orig@2001-01-01T00:00:00Z": "before the oldest moment kept",
        "orig@yesterday-ish:": "is not a moment",
        "orig@": "say what after '@'",
    }
    for src, msg in cases.items():
        r = run_ferry("fs", "mkfs", "--store", file_store_url, "copy", "--from", src)
        assert r.returncode in (1, 2) and msg in r.stderr, (src, r.stderr)
    assert objects(file_store_url, "copy/") == []
    assert objects(file_store_url, keys.pins_prefix(root_of(file_store_url, "orig"))) == []
    r = run_ferry("fs", "mkfs", "--store", file_store_url, "orig", "--from", "orig")
    assert r.returncode == 1 and "already exists" in r.stderr


@pytest.mark.parametrize("point", ["clone_after_pending", "clone_before_ready", "clone_before_incarnation"])
def test_kill9_while_cloning_leaves_nothing_visible_and_gc_cleans_it(file_store_url, new_mount, point):
    a = new_mount("a")
    a.mkfs(file_store_url, "orig", options=["history=0"])
    a.mount(file_store_url, "orig")
    fill(a.mountpoint)
    a.umount()
    ferry_ok("fs", "snapshot", "create", "--store", file_store_url, "orig", "s1")
    r = run_ferry("fs", "mkfs", "--store", file_store_url, "copy", "--from", "orig@s1",
                  env={"FERRY_FAILPOINTS": point})
    assert r.returncode == -signal.SIGKILL
    store = open_store(file_store_url)
    try:
        assert vol_mod.live_volume(store, "copy") is None
        orig = vol_mod.locate(store, "orig")[0].root
        # Age the clone pin past the pending timeout: its creator is dead.
        [pin_key] = list(store.list(keys.pins_prefix(orig, "clone")))
        pin = Pin.decode(store.get(pin_key), pin_key)
        old = Pin(pin.kind, pin.name, pin.state, pin.position, pin.created_ns - PENDING_TIMEOUT_NS - 10**9,
                  pin.holder)
        store.put(pin_key, old.encode())
    finally:
        store.close()
    ferry_ok("fs", "gc", "--store", file_store_url, "orig", "--grace", "0")
    assert objects(file_store_url, keys.pins_prefix(orig, "clone")) == []
    assert objects(file_store_url, "copy/") == []
    # The name is free and the snapshot still clones.
    ferry_ok("fs", "mkfs", "--store", file_store_url, "copy", "--from", "orig@s1")
    a.mount(file_store_url, "copy")
    assert (a.mountpoint / "big").read_bytes() == pattern("big", BIG)
    a.umount()
    fsck_clean(file_store_url, "copy")
    fsck_clean(file_store_url, "orig")


def _versions_over_time(mp, n: int) -> list[tuple[int, bytes]]:
    """Rewrite one file n times (fsync each), noting a moment after each fsync
    (rounded up to the millisecond that restore times are written in)."""
    import time
    out = []
    for i in range(n):
        data = pattern(f"v{i}", 200_000 + 1000 * i)
        write_fsync(mp / "f", data)
        out.append((time.time_ns() + 1_000_000, data))
        time.sleep(0.3)
    return out


def test_point_in_time_clones_hold_exactly_the_version_of_their_moment(store_url, new_mount):
    from fsd.backup.history import format_ns
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(store_url, "orig")                              # the default history window (1h)
    # The owner snapshots and collects garbage all the time meanwhile.
    a.mount(store_url, "orig", options=["gc_interval=1", "gc_grace=0.1", "snapshot_every=2"])
    versions = _versions_over_time(a.mountpoint, 6)
    ferry_ok("fs", "gc", "--store", store_url, "orig", "--grace", "0")
    out = ferry_ok("fs", "history", "--store", store_url, "orig", "--limit", "0")
    assert "history window 3600s" in out
    for i, (t, data) in enumerate(versions):
        name = f"at{i}"
        ferry_ok("fs", "mkfs", "--store", store_url, name, "--from", f"orig@{format_ns(t)}")
        b.mount(store_url, name)
        assert (b.mountpoint / "f").read_bytes() == data, f"clone at {format_ns(t)} is not version {i}"
        b.umount()
        fsck_clean(store_url, name)
    ferry_ok("fs", "mkfs", "--store", store_url, "recent", "--from", "orig@-0s")
    b.mount(store_url, "recent")
    assert (b.mountpoint / "f").read_bytes() == versions[-1][1]
    b.umount()
    a.umount()
    fsck_clean(store_url, "orig")


def test_without_a_history_window_gc_frees_the_past_and_restores_are_refused(file_store_url, new_mount):
    from fsd.backup.history import format_ns
    a = new_mount("a")
    a.mkfs(file_store_url, "orig", options=["history=0"])
    a.mount(file_store_url, "orig", options=["gc=off"])
    versions = _versions_over_time(a.mountpoint, 3)
    a.umount()
    ferry_ok("fs", "gc", "--store", file_store_url, "orig", "--grace", "0")
    assert "1 commit(s) can be restored" in ferry_ok("fs", "history", "--store", file_store_url, "orig")
    r = run_ferry("fs", "mkfs", "--store", file_store_url, "old", "--from", f"orig@{format_ns(versions[0][0])}")
    assert r.returncode == 1 and "before the oldest moment kept" in r.stderr, r.stderr
    ferry_ok("fs", "mkfs", "--store", file_store_url, "new", "--from", f"orig@{format_ns(versions[-1][0])}")


def _model_tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _random_history(store_url: str, new_mount, seed: int, steps: int, picks: int) -> None:
    """Random rewrites, truncates, deletes and renames, each made durable by
    fsync and noted with the moment after it, while the owner's GC runs every
    0.5 s and a standalone GC (no grace) runs at random; then clones at random
    noted moments must equal the model at that moment exactly."""
    import random
    import time

    from fsd.backup.history import format_ns
    from tests.helpers.mount import fsync_dir
    rnd = random.Random(seed)
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(store_url, "orig", options=["history=1h"])
    a.mount(store_url, "orig", options=["gc_interval=0.5", "gc_grace=0", "snapshot_every=3", "commit_interval=30"])
    mp = a.mountpoint
    model: dict[str, bytes] = {}
    moments: list[tuple[int, dict[str, bytes]]] = []
    for step in range(steps):
        op = rnd.choice(["write", "write", "overwrite", "truncate", "delete", "rename"])
        names = sorted(model)
        if op == "write" or not names:
            name = f"f{rnd.randrange(12)}"
            data = pattern(f"{seed}-{step}", rnd.choice([10, 5000, 300_000, 1_500_000]))
            write_fsync(mp / name, data)
            model[name] = data
        elif op == "overwrite":
            name = rnd.choice(names)
            off = rnd.randrange(len(model[name]) + 1)
            patch = pattern(f"p{seed}-{step}", rnd.choice([1, 4096, 1 << 20]))
            with open(mp / name, "r+b") as f:
                f.seek(off)
                f.write(patch)
                f.flush()                  # out of Python's buffer: fsync covers only what the kernel has
                os.fsync(f.fileno())
            cur = bytearray(model[name])
            cur[off:off + len(patch)] = patch
            model[name] = bytes(cur)
        elif op == "truncate":
            name = rnd.choice(names)
            n = rnd.randrange(len(model[name]) + 1)
            with open(mp / name, "r+b") as f:
                f.truncate(n)
                os.fsync(f.fileno())
            model[name] = model[name][:n]
        elif op == "delete":
            name = rnd.choice(names)
            (mp / name).unlink()
            fsync_dir(mp)
            del model[name]
        else:
            name = rnd.choice(names)
            to = f"r{rnd.randrange(12)}"
            os.rename(mp / name, mp / to)
            fsync_dir(mp)
            model[to] = model.pop(name)
        moments.append((time.time_ns(), dict(model)))       # after the fsync, before the next commit
        if rnd.random() < 0.15:
            ferry_ok("fs", "gc", "--store", store_url, "orig", "--grace", "0")
        time.sleep(rnd.choice([0.0, 0.01, 0.05]))
    for i, (t, want) in enumerate(rnd.sample(moments, min(picks, len(moments)))):
        name = f"pit{i}"
        ferry_ok("fs", "mkfs", "--store", store_url, name, "--from", f"orig@{format_ns(t, precise=True)}")
        b.mount(store_url, name)
        got = _model_tree(b.mountpoint)
        b.umount()
        assert got.keys() == want.keys(), (seed, format_ns(t), sorted(got), sorted(want))
        for k in want:
            assert got[k] == want[k], (seed, format_ns(t), k, len(got[k]), len(want[k]))
        fsck_clean(store_url, name)
    a.umount()
    fsck_clean(store_url, "orig")


def _seed() -> int:
    return int(os.environ.get("FERRY_SEED", "0")) or int.from_bytes(os.urandom(3), "little")


def test_random_history_restores_exactly_what_was_acknowledged(file_store_url, new_mount):
    seed = _seed()
    print(f"seed {seed} (rerun with FERRY_SEED={seed})")
    _random_history(file_store_url, new_mount, seed, steps=40, picks=4)


@pytest.mark.slow
@pytest.mark.parametrize("chain", range(3))
def test_random_history_restores_exactly_what_was_acknowledged_long(s3_store_url, new_mount, chain):
    seed = _seed() + chain
    print(f"seed {seed} (rerun with FERRY_SEED={seed})")
    _random_history(s3_store_url, new_mount, seed, steps=200, picks=12)
