"""Model test: random operation sequences on MetaOps, checked after every
step against the three promises of the metadata core:

  (a) replay of every record emitted so far rebuilds the live state,
  (b) a snapshot rebuilds the live state,
  (c) fsck finds nothing,

plus a path-level model of the tree (what `ls -R` would show), which catches
operations that are consistent but wrong (a rename that moved the wrong
subtree, say).
"""
import stat

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fsd.meta.check import check_state
from fsd.meta.ops import RENAME_EXCHANGE, RENAME_NOREPLACE, FsError, MetaOps
from fsd.meta.records import decode_records, encode_records, validate_record
from fsd.meta.state import ROOT_INO, BlockRef, MetaState, new_volume_records

BS = 8
# Few names, so that operations collide; odd ones now and then for the errors.
ANY_NAME = st.sampled_from([b"a", b"b", b"c"] * 6 + [b"", b".", b"..", b"x/y", b"z" * 256])
Path = tuple


class MetaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        base = new_volume_records(0)
        self.ops = MetaOps(MetaState.from_records(BS, base))
        self.committed: list = list(base)
        self.now = 0
        self.tree: dict[Path, int] = {(): ROOT_INO}     # path -> ino, what ls -R shows
        self.open: set[int] = set()                       # files held open (may be orphans)

    # ------------------------------------------------------------ helpers
    def tick(self) -> int:
        self.now += 1
        return self.now

    def paths(self, data, kind=None, root=True) -> Path:
        ps = sorted(p for p, ino in self.tree.items()
                    if (root or p) and (kind is None or stat.S_IFMT(self.ops.state.inodes[ino].mode) == kind))
        return data.draw(st.sampled_from(ps)) if ps else ()

    def parent(self, data) -> Path:
        """Mostly a directory; now and then anything (ENOTDIR)."""
        return self.paths(data, stat.S_IFDIR if data.draw(st.integers(0, 9)) else None)

    def attempt(self, fn, *args, **kw):
        """Run an op; a failure must leave no trace."""
        before = len(self.ops.pending)
        try:
            return True, fn(*args, **kw)
        except FsError:
            assert len(self.ops.pending) == before, "failed operation emitted records"
            return False, None

    def maybe_purge(self, node) -> None:
        if node is not None and node.ino in self.ops.state.inodes and node.nlink == 0 \
                and node.ino not in self.open:
            self.ops.purge(node.ino)

    def child_name(self, data, parent: Path, name: bytes) -> bytes:
        """Mostly an existing name in `parent` (else the drawn one)."""
        names = sorted(p[-1] for p in self.tree if p and p[:-1] == parent)
        return data.draw(st.sampled_from(names)) if names and data.draw(st.booleans()) else name

    def victim(self, data, kind: int | None, name: bytes) -> Path:
        """Mostly an existing non-root path of `kind`, else parent + drawn name."""
        p = self.paths(data, kind, root=False)
        if p and data.draw(st.integers(0, 4)):
            return p
        return self.parent(data) + (name,)

    def subtree(self, top: Path) -> dict[Path, int]:
        return {p: i for p, i in self.tree.items() if p[:len(top)] == top}

    # -------------------------------------------------------------- rules
    @initialize(committed=st.booleans())
    def starter_tree(self, committed):
        """Begin with something to work on (from an empty root most generated
        operations fail early and the runs stay shallow; the unit tests cover
        the empty volume)."""
        ops, now = self.ops, self.tick()
        d1 = ops.mkdir(ROOT_INO, b"a", 0o755, 0, 0, now)
        d2 = ops.mkdir(ROOT_INO, b"b", 0o755, 0, 0, now)
        sub = ops.mkdir(d2.ino, b"c", 0o755, 0, 0, now)
        f = ops.create(d1.ino, b"a", 0o644, 0, 0, now)
        g = ops.create(ROOT_INO, b"c", 0o644, 0, 0, now)
        h = ops.link(g.ino, d2.ino, b"a", now)
        ln = ops.symlink(sub.ino, b"b", b"../a", 0, 0, now)
        self.tree.update({(b"a",): d1.ino, (b"b",): d2.ino, (b"b", b"c"): sub.ino, (b"a", b"a"): f.ino,
                          (b"c",): g.ino, (b"b", b"a"): h.ino, (b"b", b"c", b"b"): ln.ino})
        if committed:
            self.commit_now()

    @rule(data=st.data(), name=ANY_NAME, kind=st.sampled_from(["file", "file", "dir", "dir", "link", "fifo"]))
    def make(self, data, name, kind):
        parent = self.parent(data)
        pino = self.tree[parent]
        ops, now = self.ops, self.tick()
        if kind == "file":
            ok, n = self.attempt(ops.create, pino, name, 0o644, 1, 2, now)
        elif kind == "fifo":
            ok, n = self.attempt(ops.create, pino, name, stat.S_IFIFO | 0o600, 1, 2, now)
        elif kind == "dir":
            ok, n = self.attempt(ops.mkdir, pino, name, 0o755, 1, 2, now)
        else:
            ok, n = self.attempt(ops.symlink, pino, name, b"t" * data.draw(st.integers(1, 5)), 1, 2, now)
        if ok:
            self.tree[parent + (name,)] = n.ino

    @rule(data=st.data(), name=ANY_NAME)
    def link(self, data, name):
        src = self.paths(data, None if data.draw(st.integers(0, 5)) == 0 else stat.S_IFREG, root=False)
        if not src:
            return
        parent = self.parent(data)
        ok, n = self.attempt(self.ops.link, self.tree[src], self.tree[parent], name, self.tick())
        if ok:
            self.tree[parent + (name,)] = n.ino

    @rule(data=st.data(), name=ANY_NAME)
    def unlink(self, data, name):
        kind = data.draw(st.sampled_from([stat.S_IFREG, stat.S_IFREG, stat.S_IFLNK, None]))
        path = self.victim(data, kind, name)
        ok, n = self.attempt(self.ops.unlink, self.tree[path[:-1]], path[-1], self.tick())
        if ok:
            del self.tree[path]
            self.maybe_purge(n)

    @rule(data=st.data(), name=ANY_NAME)
    def rmdir(self, data, name):
        path = self.victim(data, stat.S_IFDIR, name)
        ok, _ = self.attempt(self.ops.rmdir, self.tree[path[:-1]], path[-1], self.tick())
        if ok:
            del self.tree[path]

    @rule(data=st.data(), new_name=ANY_NAME,
          flags=st.sampled_from([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_EXCHANGE, 3]))
    def rename(self, data, new_name, flags):
        src = self.paths(data, root=False)
        if not src:
            return
        np_ = self.parent(data)
        new_name = self.child_name(data, np_, new_name)   # often over an existing name
        dst = np_ + (new_name,)
        ok, replaced = self.attempt(self.ops.rename, self.tree[src[:-1]], src[-1], self.tree[np_],
                                    new_name, flags, self.tick())
        if not ok or src == dst or self.tree.get(dst) == self.tree[src]:
            return                                          # failed, or a no-op
        a, b = self.subtree(src), self.subtree(dst)
        for p in list(a) + list(b):
            self.tree.pop(p, None)
        for p, i in a.items():
            self.tree[dst + p[len(src):]] = i
        if flags & RENAME_EXCHANGE:
            for p, i in b.items():
                self.tree[src + p[len(dst):]] = i
        self.maybe_purge(replaced)

    @rule(data=st.data())
    def open_file(self, data):
        p = self.paths(data, stat.S_IFREG, root=False)
        if p:
            self.open.add(self.tree[p])

    @rule(data=st.data())
    def close_file(self, data):
        if self.open:
            ino = data.draw(st.sampled_from(sorted(self.open)))
            self.open.discard(ino)
            self.maybe_purge(self.ops.state.inodes.get(ino))

    @rule(data=st.data(), off=st.integers(0, 3 * BS), n=st.integers(1, 2 * BS), tag=st.integers(0, 255))
    def write(self, data, off, n, tag):
        """What the data layer does: note the write, later commit its blocks."""
        inos = sorted({self.tree[p] for p in self.tree if p} | self.open)
        regs = [i for i in inos if stat.S_ISREG(self.ops.state.inodes[i].mode)]
        if not regs:
            return
        ino = data.draw(st.sampled_from(regs))
        node = self.ops.note_write(ino, off + n, self.tick())
        for idx in range(off // BS, (off + n - 1) // BS + 1):
            length = min(BS, node.size - idx * BS)
            self.ops.set_block(ino, idx, BlockRef(bytes([tag, idx % 256]) * 16, length))

    @rule(data=st.data(), size=st.one_of(st.none(), st.integers(0, 4 * BS), st.sampled_from([0, BS, 2 * BS])),
          mode=st.one_of(st.none(), st.integers(0, 0o177777)), uid=st.one_of(st.none(), st.integers(0, 9)),
          mtime=st.one_of(st.none(), st.integers(-5, 5)))
    def setattr(self, data, size, mode, uid, mtime):
        inos = sorted({self.tree[p] for p in self.tree} | self.open)
        regs = [i for i in inos if stat.S_ISREG(self.ops.state.inodes[i].mode)]
        ino = data.draw(st.sampled_from(regs if regs and data.draw(st.integers(0, 3)) else inos))
        self.attempt(self.ops.setattr, ino, self.tick(), size=size, mode=mode, uid=uid, mtime_ns=mtime)

    @rule(data=st.data(), name=st.sampled_from([b"user.a", b"user.b", b""]), value=st.binary(max_size=4),
          remove=st.booleans())
    def xattr(self, data, name, value, remove):
        ino = self.tree[self.paths(data)]
        if remove:
            self.attempt(self.ops.removexattr, ino, name, self.tick())
        else:
            self.attempt(self.ops.setxattr, ino, name, value, self.tick())

    @rule(now=st.integers(0, 2))
    def commit(self, now):
        if now == 0:
            self.commit_now()

    def commit_now(self):
        recs = self.ops.take_pending()
        assert not self.ops.pending and not self.ops.attr_dirty
        assert decode_records(encode_records(recs)) == recs
        self.committed.extend(recs)

    # --------------------------------------------------------- invariants
    @invariant()
    def replay_equals_live(self):
        ops, live = self.ops, self.ops.state
        owed = [live.inodes[i].to_record() for i in sorted(ops.attr_dirty) if i in live.inodes]
        for r in ops.pending:
            validate_record(r)
        back = MetaState.from_records(BS, self.committed + ops.pending + owed)
        assert back.content() == live.content()
        assert (back.next_ino, back.next_cookie, back.dir_parent, back.reg_bytes) == \
            (live.next_ino, live.next_cookie, live.dir_parent, live.reg_bytes)

    @invariant()
    def snapshot_equals_live(self):
        live = self.ops.state
        back = MetaState.from_records(BS, live.snapshot_records())
        assert back.content() == live.content()
        assert (back.dir_parent, back.reg_bytes) == (live.dir_parent, live.reg_bytes)
        assert back.next_ino <= live.next_ino

    @invariant()
    def fsck_is_clean(self):
        assert check_state(self.ops.state) == []

    @invariant()
    def tree_matches_model(self):
        ops = self.ops
        seen: dict[Path, int] = {(): ROOT_INO}
        todo = [()]
        while todo:
            p = todo.pop()
            for name, node, _ in ops.readdir(seen[p], 0):
                assert ops.lookup(seen[p], name) is node
                seen[p + (name,)] = node.ino
                if stat.S_ISDIR(node.mode):
                    assert ops.lookup(node.ino, b"..").ino == seen[p]
                    todo.append(p + (name,))
        assert seen == self.tree
        live = {i for i in self.tree.values()} | self.open
        assert set(ops.state.inodes) == {i for i in live if i in ops.state.inodes}
        assert sorted(ops.orphans()) == sorted(i for i in self.open if i in ops.state.inodes
                                               and ops.state.inodes[i].nlink == 0)
        regs = sum(n.size for n in ops.state.inodes.values() if stat.S_ISREG(n.mode))
        assert ops.usage() == (len(ops.state.inodes), regs)


MetaMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestMetaModel = MetaMachine.TestCase
