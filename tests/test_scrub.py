"""The background scrub finds damage in the store before a reader does.

A real mount on a `file://` store with a short scrub interval: a clean pass
reports nothing; a byte flipped in one data object is reported by the next
pass (status file, log), naming that object; and an object GC removed
after an overwrite is not reported as missing (Scrubber on a real store).
"""
from __future__ import annotations

import json
import os
import time

from fsd.format import keys
from fsd.format.dataobj import encode_block
from fsd.meta.state import BlockRef
from fsd.store import open_store
from fsd.store.filestore import FileStore
from fsd.volume.objects import locate
from fsd.volume.scrub import Scrubber, ScrubConfig


def _scrub_status(m) -> dict:
    try:
        return json.loads((m.cache_dir / "status.json").read_text()).get("scrub") or {}
    except (OSError, ValueError):
        return {}


def _wait(m, what: str, cond, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        sc = _scrub_status(m)
        if cond(sc):
            return sc
        assert time.monotonic() < deadline, f"{what}: scrub status {sc}\nlog:\n{m.log()[-3000:]}"
        time.sleep(0.1)


def test_a_clean_pass_finds_nothing_and_the_next_finds_a_flipped_byte(file_store_url, new_mount):
    m = new_mount("a")
    m.mkfs(file_store_url, "v")
    m.mount(file_store_url, "v", options=["scrub_interval=1s", "scrub_rate=64M"])
    with open(m.mountpoint / "f", "wb") as f:
        f.write(os.urandom(3 << 20))          # three 1 MiB data objects
        os.fsync(f.fileno())
    written_at = time.time()
    # Passes run back to back (interval 1 s): wait for a finished one that started
    # after the data was in the store (the status names the last finished pass's start).
    sc = _wait(m, "a clean pass over the fsynced data",
               lambda s: (s.get("last_pass_started") or 0) > written_at + 0.01)
    assert sc["damaged_total"] == 0 and sc["checked_objects"] >= 3, sc

    store = open_store(file_store_url)
    ref, _ = locate(store, "v")
    key = sorted(store.list(keys.data_prefix(ref.root)))[1]
    body = bytearray(store.get(key))
    body[len(body) // 2] ^= 0x01
    flipped_at = time.time()
    store.put(key, bytes(body))
    store.close()
    # A pass may have been under way (and past that object) while the byte flipped: wait
    # for one that started afterwards (the scrubber stamps passes with the same wall clock).
    sc = _wait(m, "a pass started after the flip to report it",
               lambda s: (s.get("last_pass_started") or 0) > flipped_at + 0.01)
    assert sc["damaged_total"] >= 1 and sc["damaged_last_pass"] >= 1, sc
    assert {f["key"] for f in sc["findings"]} == {key}, sc
    assert all("damaged" in f["problem"] for f in sc["findings"]), sc
    assert f"scrub found data object {key} damaged" in m.log()
    m.umount()


async def test_an_object_freed_after_an_overwrite_is_not_called_missing(tmp_path, autojump_clock):
    store = FileStore(tmp_path / "store", create=True)
    root = "vol/r1"
    raws = [os.urandom(4096) for _ in range(3)]
    blocks: dict[int, dict[int, BlockRef]] = {7: {}}
    for i, raw in enumerate(raws):
        h, obj = encode_block(raw, False, "blake3")
        store.put(keys.data_key(root, h, 1), obj)
        blocks[7][i] = BlockRef(hash=h, length=4096, epoch=1)
    gone, lost = blocks[7][0], blocks[7][2]
    store.delete(keys.data_key(root, gone.hash, 1))       # overwritten, then freed by GC ...
    del blocks[7][0]                                      # ... the file no longer uses it
    store.delete(keys.data_key(root, lost.hash, 1))       # but this one is still used: lost
    planned = {7: {0: gone, **blocks[7]}}                 # the pass was planned before the overwrite
    calls = []

    def live_blocks() -> dict[int, dict[int, BlockRef]]:   # the first call plans; the overwrite lands after
        calls.append(1)
        return planned if len(calls) == 1 else blocks

    s = Scrubber(volume="v", roots=(root,), store=store, content_hash="blake3", blocks=live_blocks,
                 progress_path=tmp_path / "scrub.json", cfg=ScrubConfig(interval=3600, rate=1 << 20),
                 wall=lambda: 1000.0)
    await s.run_pass()
    found = s.progress.findings
    assert [f["key"] for f in found] == [keys.data_key(root, lost.hash, 1)], found
    assert s.progress.checked_objects == 3 and s.progress.passes == 1
    assert json.loads((tmp_path / "scrub.json").read_text())["passes"] == 1
