"""Group commit (issue 22): fsyncs that wait at the same moment share one
commit, one journal segment PUT, in both durability modes; and sharing
never acknowledges anything early.

Eight threads each append records to their own file and fdatasync after
every one, for a while; each records which of its records were
acknowledged. Then the daemon is killed (-9) and the volume mounted again:
with durability=remote taken over on a fresh cache (another host), with
durability=local on the same cache (its promise is the host's local
journal): every acknowledged record of every writer must be there, in
order. The daemon's own counts (status file) say how many fsyncs it
answered and how many commits it made durable: segment PUTs with
durability=remote, local-journal appends (each one fdatasync) with
durability=local. Fewer than fsyncs means fsyncs were answered together;
with durability=local the segment PUTs must be fewer still (the uploader
gathers locally durable batches).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time

import pytest

from tests.helpers.mount import fsck_clean

WRITERS = 8
RECORD = 4096


def _writer(path, stop: threading.Event, acked: list[int]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        n = 0
        while not stop.is_set():
            try:
                os.write(fd, n.to_bytes(8, "big") * (RECORD // 8))
                os.fdatasync(fd)
            except OSError:
                return                       # the daemon was killed: nothing more is acknowledged
            acked.append(n)
            n += 1
    finally:
        with contextlib.suppress(OSError):       # ENOTCONN once the daemon is gone
            os.close(fd)


def _counts(m) -> tuple[int, int, int]:
    """fsyncs answered, segment PUTs, local-journal appends."""
    try:
        st = json.loads((m.cache_dir / "status.json").read_text())
    except (OSError, ValueError):
        return 0, 0, 0                       # not written yet (the daemon writes it every second)
    fsyncs = sum(st["metrics"]["fsync_seconds"]["counts"])
    return fsyncs, st["commits"], st["local_appends"]


@pytest.mark.parametrize("durability", ["remote", "local"])
def test_eight_writers_share_commits_and_keep_every_acknowledged_record(s3_store_url, new_mount, durability):
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(s3_store_url, "v")
    a.mount(s3_store_url, "v", options=[f"durability={durability}"])
    stop = threading.Event()
    acked: list[list[int]] = [[] for _ in range(WRITERS)]
    threads = [threading.Thread(target=_writer, args=(a.mountpoint / f"w{i}", stop, acked[i]), daemon=True)
               for i in range(WRITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while True:              # every writer has had many fsyncs answered, and the status file says so
        fsyncs, commits, appends = _counts(a)   # (it is rewritten every second)
        if min(len(x) for x in acked) >= 40 and fsyncs >= WRITERS * 40:
            break
        assert time.monotonic() < deadline and all(t.is_alive() for t in threads), [len(x) for x in acked]
        time.sleep(0.1)
    a.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    if durability == "remote":
        assert commits < fsyncs, f"{fsyncs} fsyncs took {commits} commits: none were answered together"
    else:
        assert 0 < appends < fsyncs, f"{fsyncs} fsyncs took {appends} local appends: none were answered together"
        assert commits < appends, f"{appends} local appends took {commits} segment PUTs: uploads were not gathered"

    if durability == "local":
        b = a
        b.mount(s3_store_url, "v")
    else:
        b.mount(s3_store_url, "v", takeover=True)
    for i in range(WRITERS):
        data = (b.mountpoint / f"w{i}").read_bytes()
        have = [int.from_bytes(data[k:k + 8], "big") for k in range(0, len(data) - len(data) % RECORD, RECORD)]
        assert have[:len(acked[i])] == acked[i], f"writer {i}: acknowledged records missing after the takeover"
    b.umount()
    fsck_clean(s3_store_url, "v")
