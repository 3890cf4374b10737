"""The owning daemon's background snapshots and GC (fsd/gc/live.py), on real
mounts over moto_server and file://: garbage of the live epoch is freed while
a writer never stops, replay after a crash stays bounded although the writer
is never quiet, and bytes that were garbage, deleted, and then written again
survive a crash (the re-use race a live GC must not lose)."""
from __future__ import annotations

import mmap
import os
import random
import re
import threading
import time

from fsd.format import keys
from fsd.gc.run import read_report
from fsd.store import open_store
from fsd.volume import objects as vol_mod
from tests.helpers.mount import fsck_clean, fsync_dir, write_fsync

VOL = "vol"
FAST_GC = ["commit_interval=0.2", "snapshot_every=8", "gc_interval=1s", "gc_grace=0"]


def _usage(store_url: str) -> dict[str, int]:
    """Objects and bytes by kind under the volume's root."""
    store = open_store(store_url)
    try:
        root = vol_mod.locate(store, VOL)[0].root
        out = {"data": 0, "data_bytes": 0, "segments": 0, "snapshots": 0}
        for o in store.list_info(keys.data_prefix(root)):
            out["data"] += 1
            out["data_bytes"] += o.size
        out["segments"] = sum(1 for _ in store.list(keys.journal_prefix(root)))
        out["snapshots"] = sum(1 for _ in store.list(keys.snapshots_prefix(root)))
        return out
    finally:
        store.close()


def _report(store_url: str) -> dict | None:
    store = open_store(store_url)
    try:
        return read_report(store, vol_mod.locate(store, VOL)[0].root)
    finally:
        store.close()


def _wait_gc_after(store_url: str, t_ns: int, timeout: float = 60.0) -> dict:
    """The first background GC report of a pass that started after `t_ns`."""
    deadline = time.monotonic() + timeout
    while True:
        r = _report(store_url)
        if r is not None and r["started_ns"] > t_ns and r["finished_ns"]:
            return r
        assert time.monotonic() < deadline, f"no GC pass after {t_ns}: last report {r}"
        time.sleep(0.2)


def test_live_gc_frees_garbage_while_a_writer_never_stops(store_url, new_mount):
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL, options=FAST_GC)
    stop = threading.Event()

    def noise() -> None:
        """Keeps the committer from ever being quiet: O_DIRECT writes reach the
        daemon at once (buffered ones would wait in the kernel's page cache)."""
        buf = mmap.mmap(-1, 4096)
        fd = os.open(a.mountpoint / "noise", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
        try:
            while not stop.is_set():
                buf[:] = os.urandom(4096)
                os.pwrite(fd, buf, 4096 * random.randrange(64))
                time.sleep(0.005)
        finally:
            os.close(fd)

    t = threading.Thread(target=noise)
    t.start()
    acked: dict[str, bytes] = {}
    rnd = random.Random(11)
    try:
        for _round in range(8):
            t0 = time.time_ns()
            for _i in range(10):
                name = f"f{rnd.randrange(5)}"
                data = os.urandom(rnd.choice([3000, 200_000, 1_100_000]))
                write_fsync(a.mountpoint / name, data)
                acked[name] = data
                if rnd.random() < 0.2:
                    os.unlink(a.mountpoint / name)
                    fsync_dir(a.mountpoint)
                    acked.pop(name)
            _wait_gc_after(store_url, t0)
    finally:
        stop.set()
        t.join()
    live = sum(len(v) for v in acked.values()) + 4096
    t0 = time.time_ns()
    report = _wait_gc_after(store_url, t0)
    use = _usage(store_url)
    # Every overwritten and unlinked file's data is gone once a pass ran after it.
    assert use["data_bytes"] <= 1.5 * live + (2 << 20), (use, live, report)
    assert use["segments"] < 60, use         # folded into snapshots, not 80+ rounds of segments
    a.kill9()                                # no release: the takeover replays after the newest snapshot
    b = new_mount("b")
    b.mount(store_url, VOL, takeover=True)
    replayed = [int(m) for m in re.findall(r"\((\d+) segments replayed", b.log())]
    assert replayed and replayed[-1] <= 3 * 8 + 4, b.log()
    got = {p.name: p.read_bytes() for p in b.mountpoint.iterdir() if p.name != "noise"}
    assert sorted(got) == sorted(acked)
    for name, data in got.items():
        assert data == acked[name], name
    b.umount()
    fsck_clean(store_url, VOL)


def test_bytes_deleted_as_garbage_then_written_again_survive_a_crash(store_url, new_mount):
    """The owner uploaded A, A became garbage, GC deleted A's object; the same
    bytes written again must be uploaded again, not taken for 'already there'."""
    a = new_mount("a")
    a.mkfs(store_url, VOL, options=["history=0"])
    a.mount(store_url, VOL, options=FAST_GC)
    payload = os.urandom(300_000)
    write_fsync(a.mountpoint / "f", payload)
    before = _usage(store_url)["data"]
    write_fsync(a.mountpoint / "f", os.urandom(300_000))       # payload is garbage now
    t0 = time.time_ns()
    deadline = time.monotonic() + 60
    while True:
        r = _wait_gc_after(store_url, t0)
        if r["deleted"].get("data", {}).get("objects"):
            break
        assert time.monotonic() < deadline, r
        t0 = r["started_ns"]
    assert _usage(store_url)["data"] <= before
    write_fsync(a.mountpoint / "g", payload)                    # the same bytes again
    a.kill9()
    b = new_mount("b")                                          # a fresh cache: no local copy to hide a hole
    b.mount(store_url, VOL, takeover=True)
    assert (b.mountpoint / "g").read_bytes() == payload
    b.umount()
    fsck_clean(store_url, VOL)


def test_gc_off_keeps_everything(file_store_url, new_mount):
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL, options=[*FAST_GC, "gc=off"])
    for _ in range(3):
        write_fsync(a.mountpoint / "f", os.urandom(200_000))
    time.sleep(2.5)
    assert _usage(file_store_url)["data"] >= 3
    assert _report(file_store_url) is None
    a.umount()


def test_an_object_committed_during_a_pass_is_not_collected(file_store_url, new_mount):
    """A pass reads its roots (the working copy at P), then lists the store.
    An object uploaded and committed in between is in the listing but not in
    the roots: only the recorder of commits since the pass began keeps it."""
    a = new_mount("a")
    a.mkfs(file_store_url, VOL, options=["history=0"])
    a.mount(file_store_url, VOL, options=[*FAST_GC, "gc_interval=0.5s"],
            extra_env={"FERRY_FAILPOINT_DELAYS": "gc_before_listing=3"})
    write_fsync(a.mountpoint / "warmup", b"x")
    deadline = time.monotonic() + 30
    while "failpoint gc_before_listing" not in a.log():
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.05)
    payload = os.urandom(500_000)
    t0 = time.time_ns()
    write_fsync(a.mountpoint / "g", payload)          # inside the pass's window
    _wait_gc_after(file_store_url, t0 - 10**9)        # that pass (started before t0) is over
    a.kill9()
    b = new_mount("b")
    b.mount(file_store_url, VOL, takeover=True)
    assert (b.mountpoint / "g").read_bytes() == payload
    b.umount()
    fsck_clean(file_store_url, VOL)
