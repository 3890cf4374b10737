"""Model-based test: random operation sequences run on a ferry mount and on a
local directory side by side; after every step the two trees must match
(names, types, sizes, modes, contents, link targets, nlink, xattrs), and at
the end of each example again after an unmount/mount with a fresh cache."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

NAMES = st.sampled_from(["a", "b", "c", "d"])
DIRS = st.sampled_from(["", "a", "b", "a/c"])
EXAMPLES = int(os.environ.get("FERRY_MODEL_EXAMPLES", "25"))


def snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st_ = os.lstat(p)
            ent = {"mode": st_.st_mode, "nlink": st_.st_nlink if not stat.S_ISDIR(st_.st_mode) else None}
            if stat.S_ISREG(st_.st_mode):
                ent["data"] = p.read_bytes()
            elif stat.S_ISLNK(st_.st_mode):
                ent["target"] = os.readlink(p)
            if not stat.S_ISLNK(st_.st_mode):
                ent["xattrs"] = {k: os.getxattr(p, k) for k in sorted(os.listxattr(p)) if k.startswith("user.")}
            out[rel] = ent
    return out


def both(fn):
    """Run fn on both trees; they must raise the same errno or both succeed."""
    def run(self, **kw):
        results = []
        for root in (self.local, self.ferry):
            try:
                fn(self, root, **kw)
                results.append(None)
            except OSError as e:
                results.append(e.errno)
        assert results[0] == results[1], f"{fn.__name__}{kw}: local errno {results[0]}, ferry {results[1]}"
    run.__name__ = fn.__name__
    return run


class TreeModel(RuleBasedStateMachine):
    volume = None        # set by the test function
    local_root: Path = None

    @initialize()
    def setup(self):
        self.ferry = self.volume.root / "model"
        self.local = self.local_root
        for root in (self.ferry, self.local):
            if root.exists():
                shutil.rmtree(root)
            root.mkdir()

    @rule(d=DIRS, n=NAMES)
    @both
    def mkdir(self, root, d, n):
        os.mkdir(root / d / n)

    @rule(d=DIRS, n=NAMES, off=st.integers(0, 3_000_000), size=st.integers(0, 70_000), seed=st.integers(0, 255))
    @both
    def write(self, root, d, n, off, size, seed):
        fd = os.open(root / d / n, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, bytes([seed]) * size, off)
        finally:
            os.close(fd)

    @rule(d=DIRS, n=NAMES, size=st.integers(0, 3_000_000))
    @both
    def truncate(self, root, d, n, size):
        os.truncate(root / d / n, size)

    @rule(d1=DIRS, n1=NAMES, d2=DIRS, n2=NAMES)
    @both
    def rename(self, root, d1, n1, d2, n2):
        os.rename(root / d1 / n1, root / d2 / n2)

    @rule(d=DIRS, n=NAMES)
    @both
    def unlink(self, root, d, n):
        os.unlink(root / d / n)

    @rule(d=DIRS, n=NAMES)
    @both
    def rmdir(self, root, d, n):
        os.rmdir(root / d / n)

    @rule(d1=DIRS, n1=NAMES, d2=DIRS, n2=NAMES)
    @both
    def link(self, root, d1, n1, d2, n2):
        os.link(root / d1 / n1, root / d2 / n2)

    @rule(d=DIRS, n=NAMES, dest=st.sampled_from(["a", "../b", "/nowhere"]))
    @both
    def symlink(self, root, d, n, dest):
        os.symlink(dest, root / d / n)

    @rule(d=DIRS, n=NAMES, mode=st.sampled_from([0o600, 0o644, 0o755, 0o4755]))
    @both
    def chmod(self, root, d, n, mode):
        p = root / d / n
        if os.path.islink(p):
            return
        os.chmod(p, mode)

    @rule(d=DIRS, n=NAMES, v=st.binary(max_size=20))
    @both
    def setxattr(self, root, d, n, v):
        p = root / d / n
        if os.path.islink(p):
            return
        os.setxattr(p, "user.k", v)

    @invariant()
    def trees_match(self):
        if getattr(self, "ferry", None) is None:
            return
        assert snapshot(self.ferry) == snapshot(self.local)

    def teardown(self):
        if getattr(self, "ferry", None) is None:
            return
        expected = snapshot(self.local)
        self.volume.remount(fresh_cache=True)
        assert snapshot(self.ferry) == expected


@pytest.mark.slow
def test_model_against_local_directory(volume, tmp_path):
    TreeModel.volume = volume
    TreeModel.local_root = tmp_path / "local-model"
    run_state_machine_as_test(
        TreeModel,
        settings=settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )
