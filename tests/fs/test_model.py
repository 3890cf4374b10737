"""Model-based test: random operation sequences run on a ferry mount and on a
local directory side by side. After every step the two trees must match
(names, types, sizes, modes, contents, link targets, nlink, xattrs) and every
operation must fail with the same errno on both; at the end of each example
the volume is unmounted and mounted again with a fresh cache and must still
match.

One mount per test function, reused across examples (the tree is emptied
between examples). FERRY_MODEL_EXAMPLES / FERRY_MODEL_STEPS override the
defaults (25 examples of up to 30 steps)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.helpers.mount import snapshot_diff, tree_snapshot

EXAMPLES = int(os.environ.get("FERRY_MODEL_EXAMPLES", "25"))
STEPS = int(os.environ.get("FERRY_MODEL_STEPS", "30"))

NAME_LIST = ["a", "b", "c", "d"]
NAMES = st.sampled_from(NAME_LIST)
# Relative targets without "..": whatever they resolve to stays inside the
# tree (following one never touches anything outside the test directory).
LINK_TARGETS = st.sampled_from(["a", "b", "a/c", "missing", "c" * 200])
XATTR_KEYS = st.sampled_from(["user.k", "user.other"])


def empty_dir(root: Path) -> None:
    root.mkdir(exist_ok=True)
    for e in os.scandir(root):
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path)
        else:
            os.unlink(e.path)


class TreeModel(RuleBasedStateMachine):
    """Paths are drawn from what exists in the local tree (so most operations
    do something), plus new names; each operation runs on the local tree,
    then on ferry's, and must have the same outcome (success or errno)."""
    # Set by the test function before the run.
    ferry_root: Path
    local_root: Path
    remount = None

    @initialize()
    def reset(self):
        self.ferry = self.ferry_root
        self.local = self.local_root
        for root in (self.ferry, self.local):
            empty_dir(root)

    # -- choosing paths (relative, from the local tree)
    def _entries(self, kind: str) -> list[str]:
        out: list[str] = []
        if getattr(self, "local", None) is None:
            return out
        for dirpath, dirnames, filenames in os.walk(self.local):
            rel = Path(dirpath).relative_to(self.local)
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                if kind == "dir" and not (p.is_dir() and not p.is_symlink()):
                    continue
                if kind == "file" and not (p.is_file() and not p.is_symlink()):
                    continue
                if kind == "nondir" and p.is_dir() and not p.is_symlink():
                    continue
                out.append(str(rel / n))
        return sorted(out)

    def has(self, kind: str) -> bool:
        return bool(self._entries(kind))

    def existing(self, data, kind: str = "any") -> str:
        choices = self._entries(kind)
        if not choices:
            return self.new(data)
        return data.draw(st.sampled_from(choices), label=f"existing {kind}")

    def new(self, data) -> str:
        """A name that does not exist yet, in an existing directory (if any is free)."""
        parent = data.draw(st.sampled_from([""] + self._entries("dir")), label="parent")
        free = [n for n in NAME_LIST if not os.path.lexists(self.local / parent / n)]
        return str(Path(parent) / data.draw(st.sampled_from(free or NAME_LIST), label="name"))

    def any_path(self, data, kind: str = "any") -> str:
        return self.existing(data, kind) if data.draw(st.booleans(), label="existing?") else self.new(data)

    def both(self, fn, paths: list[str], *args) -> None:
        results = []
        for root in (self.local, self.ferry):
            try:
                fn(*(root / p for p in paths), *args)
                results.append("ok")
            except OSError as e:
                results.append(f"{os.strerror(e.errno)} (errno {e.errno})")
        assert results[0] == results[1], \
            f"{getattr(fn, '__name__', fn)}{tuple(paths) + args}: local: {results[0]}; ferry: {results[1]}"

    # -- operations
    @rule(data=st.data())
    def mkdir(self, data):
        self.both(os.mkdir, [self.new(data)])

    @rule(data=st.data(), off=st.integers(0, 3_000_000), size=st.integers(0, 70_000), seed=st.integers(0, 255))
    def write(self, data, off, size, seed):
        def write(p):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, bytes([seed]) * size, off)
            finally:
                os.close(fd)
        self.both(write, [self.any_path(data, "file")])

    @precondition(lambda self: self.has("file"))
    @rule(data=st.data(), size=st.integers(0, 3_000_000))
    def truncate(self, data, size):
        self.both(os.truncate, [self.existing(data, "file")], size)

    @precondition(lambda self: self.has("any"))
    @rule(data=st.data())
    def rename(self, data):
        self.both(os.rename, [self.existing(data), self.any_path(data)])

    @precondition(lambda self: self.has("any"))
    @rule(data=st.data())
    def unlink(self, data):
        self.both(os.unlink, [self.existing(data)])

    @precondition(lambda self: self.has("dir"))
    @rule(data=st.data())
    def rmdir(self, data):
        self.both(os.rmdir, [self.existing(data, "dir")])

    @precondition(lambda self: self.has("nondir"))
    @rule(data=st.data())
    def link(self, data):
        def link(src, dst):
            os.link(src, dst, follow_symlinks=False)
        self.both(link, [self.existing(data, "nondir"), self.any_path(data)])

    @rule(data=st.data(), dest=LINK_TARGETS)
    def symlink(self, data, dest):
        def symlink(p):
            os.symlink(dest, p)
        self.both(symlink, [self.new(data)])

    @precondition(lambda self: self.has("any"))
    @rule(data=st.data(), mode=st.sampled_from([0o600, 0o644, 0o755, 0o4755, 0o1777]))
    def chmod(self, data, mode):
        p = self.existing(data)
        if not os.path.islink(self.local / p):        # Linux has no lchmod
            self.both(os.chmod, [p], mode)

    @precondition(lambda self: self.has("any"))
    @rule(data=st.data(), key=XATTR_KEYS, v=st.binary(max_size=20))
    def setxattr(self, data, key, v):
        p = self.existing(data)
        if not os.path.islink(self.local / p):        # no user.* xattrs on symlinks
            self.both(os.setxattr, [p], key, v)

    @precondition(lambda self: self.has("any"))
    @rule(data=st.data(), key=XATTR_KEYS)
    def removexattr(self, data, key):
        p = self.existing(data)
        if not os.path.islink(self.local / p):
            self.both(os.removexattr, [p], key)

    @invariant()
    def trees_match(self):
        if getattr(self, "ferry", None) is None:
            return
        diffs = snapshot_diff(tree_snapshot(self.local), tree_snapshot(self.ferry))
        assert not diffs, "ferry differs from the local model:\n" + "\n".join(diffs)

    def teardown(self):
        if getattr(self, "ferry", None) is None:
            return
        expected = tree_snapshot(self.local)
        type(self).remount(fresh_cache=True)
        diffs = snapshot_diff(expected, tree_snapshot(self.ferry))
        assert not diffs, "the tree changed across unmount/mount:\n" + "\n".join(diffs)


def test_model_against_local_directory(mnt, remount, tmp_path):
    TreeModel.ferry_root = mnt / "model"
    TreeModel.local_root = tmp_path / "local-model"
    TreeModel.remount = staticmethod(remount)
    run_state_machine_as_test(
        TreeModel,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )
