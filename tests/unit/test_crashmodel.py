"""The crash-torture checker must catch what it is about. Run on a plain
local directory (no ferry): the writers' history is real, then the tree is
damaged the way a broken file system would damage it."""
from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.crashmodel import History, Violation, Writer, check_tree, read_state


def _history(tmp_path: Path, seed: int, steps: int = 150) -> History:
    root = tmp_path / "w"
    root.mkdir()
    state, next_id = read_state(root)
    h = History(root=root, states=[state], next_id=next_id)
    w = Writer(h, random.Random(seed), ack_probability=0.5)
    for _ in range(steps):
        if w.step() and w.rnd.random() < w.ack_p:
            w.acknowledge()
    w.acknowledge()
    return h


def _acked_file(h: History) -> tuple[str, bytes]:
    st = h.states[h.acks[-1].index]
    files = sorted((r, st.data[f]) for r, f in st.ns.items() if isinstance(f, int) and st.data[f])
    assert files, "the history made no non-empty file"
    return files[0]


@pytest.mark.parametrize("seed", range(5))
def test_an_undamaged_tree_passes(tmp_path, seed):
    h = _history(tmp_path, seed)
    assert check_tree(h, time.monotonic()) == len(h.states) - 1


@pytest.mark.parametrize("seed", range(5))
def test_a_mutated_acknowledged_byte_fails(tmp_path, seed):
    h = _history(tmp_path, seed)
    rel, data = _acked_file(h)
    p = h.root / rel
    pos = random.Random(seed).randrange(len(data))
    with open(p, "r+b") as f:
        f.seek(pos)
        f.write(bytes([data[pos] ^ 0x5A]))
    with pytest.raises(Violation, match=f"byte {pos} "):
        check_tree(h, time.monotonic())


def test_acknowledged_bytes_read_as_zeros_fail(tmp_path):
    """The issue-7 symptom: an acknowledged range of a file reads as zeros."""
    h = _history(tmp_path, 11)
    rel, data = _acked_file(h)
    p = h.root / rel
    n = min(len(data), 4096)
    with open(p, "r+b") as f:
        f.write(bytes(n))
    if data[:n] == bytes(n):
        pytest.skip("the chosen file starts with zeros anyway")
    with pytest.raises(Violation):
        check_tree(h, time.monotonic())


def test_a_lost_acknowledged_file_and_an_invented_one_fail(tmp_path):
    h = _history(tmp_path, 3)
    rel, _ = _acked_file(h)
    os.unlink(h.root / rel)
    with pytest.raises(Violation, match="namespace"):
        check_tree(h, time.monotonic())
    (tmp_path / "2").mkdir()
    h2 = _history(tmp_path / "2", 4)
    (h2.root / "never-written").write_bytes(b"x")
    with pytest.raises(Violation, match="namespace"):
        check_tree(h2, time.monotonic())


def test_a_later_unacknowledged_state_is_allowed_but_not_an_older_one(tmp_path):
    """Undoing an acknowledged overwrite (going back to older bytes) fails;
    an unacknowledged later overwrite may or may not be there."""
    root = tmp_path / "w"
    root.mkdir()
    (root / "f").write_bytes(b"A" * 8192)
    state, next_id = read_state(root)
    h = History(root=root, states=[state], next_id=next_id)
    fid = state.ns["f"]
    for content in (b"B" * 8192, b"C" * 8192):
        (root / "f").write_bytes(content)
        new = h.current.copy()
        new.data[fid] = content
        h.states.append(new)
        h.ops.append("rewrite")
        if content[:1] == b"B":
            h.acks.append(_ack(1))
    check_tree(h, time.monotonic())                      # C: later, unacknowledged: allowed
    (root / "f").write_bytes(b"B" * 8192)
    check_tree(h, time.monotonic())                      # B: the acknowledged one
    (root / "f").write_bytes(b"A" * 8192)
    with pytest.raises(Violation):
        check_tree(h, time.monotonic())                  # A: older than acknowledged


def _ack(index: int):
    from tests.helpers.crashmodel import Ack
    return Ack(time.monotonic(), index)


def test_writer_threads_share_nothing(tmp_path):
    """Several writers at once on one directory tree, each in its subtree."""
    hs = []
    for i in range(3):
        root = tmp_path / f"w{i}"
        root.mkdir()
        st, nid = read_state(root)
        hs.append(History(root=root, states=[st], next_id=nid))
    ws = [Writer(h, random.Random(i)) for i, h in enumerate(hs)]
    ts = [threading.Thread(target=w.run) for w in ws]
    for t in ts:
        t.start()
    time.sleep(0.3)
    for w in ws:
        w.stop.set()
    for t in ts:
        t.join()
    for w, h in zip(ws, hs, strict=False):
        assert w.error is None, w.error
        check_tree(h, time.monotonic())
