"""The SQLite working copy must equal the in-memory replay after any
sequence of committed segments (same records, two appliers)."""
from __future__ import annotations

import stat

from hypothesis import given, settings
from hypothesis import strategies as st

from fsd.datapath.localdb import WorkingCopy
from fsd.meta.ops import FsError, MetaOps
from fsd.meta.records import PATCH
from fsd.meta.state import BlockRef, MetaState, new_volume_records

BS = 65536
NAMES = st.sampled_from([b"a", b"b", b"c"])
OPS = st.lists(st.tuples(st.sampled_from(["create", "mkdir", "unlink", "rmdir", "rename", "link", "write",
                                          "trunc", "xattr", "patch", "punch", "commit"]),
                         NAMES, NAMES, st.integers(0, 300_000)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_working_copy_equals_replay(tmp_path_factory, ops):
    wc = WorkingCopy(tmp_path_factory.mktemp("wc") / "meta.db", BS)
    state = MetaState.from_records(BS, new_volume_records(1))
    wc.reset("u", state, (1, 1))
    m = MetaOps(state)
    seq = 1
    dirs = [1]
    log: list = []          # records of the segment being built, in order
    for i, (op, n1, n2, num) in enumerate(ops):
        try:
            if op == "create":
                m.create(dirs[-1], n1, stat.S_IFREG | 0o644, 0, 0, i)
            elif op == "mkdir":
                node = m.mkdir(1, n1, 0o755, 0, 0, i)
                dirs.append(node.ino)
            elif op == "unlink":
                node = m.unlink(dirs[-1], n1, i)
                if node is not None and node.nlink == 0:    # a hard-linked file lives on
                    m.purge(node.ino)
            elif op == "rmdir":
                m.rmdir(1, n1, i)
            elif op == "rename":
                r = m.rename(1, n1, dirs[-1], n2, 0, i)
                if r is not None and r.nlink == 0:
                    m.purge(r.ino)
            elif op == "link":
                m.link(m.lookup(1, n1).ino, 1, n2, i)
            elif op == "write":
                node = m.lookup(dirs[-1], n1)
                if stat.S_ISREG(node.mode):
                    m.note_write(node.ino, num, i)
                    m.set_block(node.ino, num // BS, BlockRef(bytes([num % 256]) * 32, num % BS + 1))
            elif op == "trunc":
                m.setattr(m.lookup(dirs[-1], n1).ino, i, size=num)
            elif op == "xattr":
                m.setxattr(m.lookup(1, n1).ino, b"user." + n2, bytes([num % 256]), i)
            elif op == "patch":       # inline data, as the committer emits it after a batch
                node = m.lookup(dirs[-1], n1)
                if stat.S_ISREG(node.mode):
                    idx, off = num // BS % 3, num % (BS - 6000)
                    rec = [PATCH, node.ino, idx, off, bytes([num % 251 + 1]) * (num % 5999 + 1)]
                    log.extend(m.take_pending())
                    log.append(rec)
                    state.apply(rec)
            elif op == "punch":       # blocks become holes (block volumes' discards)
                node = m.lookup(dirs[-1], n1)
                if stat.S_ISREG(node.mode):
                    m.punch(node.ino, num // BS % 4, num % 3 + 1 if num % 7 else (1 << 64) - 5, i)
            elif op == "commit":
                seq += 1
                wc.apply_segment(log + m.take_pending(), (1, seq))
                log = []
        except FsError:
            pass
        if dirs[-1] not in state.inodes:
            dirs.pop()
    seq += 1
    wc.apply_segment(log + m.take_pending(), (1, seq))
    assert wc.load() == state
    assert wc.position("u") == (1, seq)
    wc.reset("u", state, (1, seq + 1))                 # bulk load of the same state
    assert wc.load() == state
    assert wc.position("other-volume") is None
