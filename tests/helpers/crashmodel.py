"""A model of what a crash may and may not do to a tree, for crash-torture
tests (SPEC §2.1, §2.3, §2.4).

Writers (threads) each own a subtree and run random operations on it:
appends, overwrites of random ranges, truncates, new files, renames (also
over an existing file), unlinks, mkdir and rmdir. After some operations a
writer makes everything it changed durable the POSIX way (fsync of every
file it touched and of every directory of its subtree) and, only once those
calls have returned, records the model state as *acknowledged*, with the
time. Nothing is recorded for a call that failed.

After kill -9 and recovery, `check_tree` compares the tree with each
writer's history, given a horizon T (acknowledgements at or before T must
hold):

- namespace: the writer's subtree (paths and types) must equal its model
  after some operation k at or after its last acknowledged one a (namespace
  operations are synchronous and journaled in order, so a crash keeps a
  prefix of them: never less than what was acknowledged, never a name that
  was not created);
- data: a regular file (identified through state k) must have a size
  between the smallest and largest sizes that file had from state a on,
  and every byte must be a value that byte had in some state from a on, or
  zero where the file was shorter in some such state (writeback may push
  a size before the data). A byte acknowledged and never changed after is
  therefore exact; a byte never written anywhere fails.

Page writeback reorders data relative to namespace operations, so data is
checked against states from a on, independently of k.
"""
from __future__ import annotations

import os
import random
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MAX_FILES = 8
MAX_FILE_BYTES = 384 << 10
MAX_DIRS = 4


@dataclass
class State:
    """One writer's subtree: relative path -> "dir" or file id; id -> content."""

    ns: dict[str, object]
    data: dict[int, bytes]

    def copy(self) -> State:
        return State(dict(self.ns), dict(self.data))


@dataclass
class Ack:
    t: float          # time.monotonic() once every fsync had returned
    index: int        # states[index] is acknowledged


@dataclass
class History:
    root: Path                      # the writer's subtree on the mount
    states: list[State]
    acks: list[Ack] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)   # when each op returned
    next_id: int = 1

    @property
    def current(self) -> State:
        return self.states[-1]


class Violation(AssertionError):
    pass


def read_state(root: Path, next_id: int = 1) -> tuple[State, int]:
    """The model of an existing subtree (the starting point of a trial)."""
    st = State({}, {})
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            st.ns[str(rel / d)] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            if not stat.S_ISREG(os.lstat(p).st_mode):
                raise Violation(f"{p}: not a regular file")
            st.ns[str(rel / f)] = next_id
            st.data[next_id] = p.read_bytes()
            next_id += 1
    return st, next_id


class Writer:
    """Runs random operations on `history.root` until stopped or until the
    file system fails (the daemon was killed)."""

    def __init__(self, history: History, rnd: random.Random, ack_probability: float = 0.4) -> None:
        self.h = history
        self.rnd = rnd
        self.ack_p = ack_probability
        self.touched: set[str] = set()
        self.error: BaseException | None = None
        self.failed_at: float | None = None     # when the file system failed under the writer
        self.stop = threading.Event()

    # ---------------------------------------------------------------- driver
    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.step():
                    continue
                if self.rnd.random() < self.ack_p:
                    self.acknowledge()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            # After the kill, ENOTCONN/ECONNABORTED/ENOENT (lazily unmounted)
            # are expected; the test fails any error from before the kill.
            self.error = e
            self.failed_at = time.monotonic()

    def acknowledge(self) -> None:
        cur = self.h.current
        for rel in sorted(self.touched):
            if isinstance(cur.ns.get(rel), int):
                fd = os.open(self.h.root / rel, os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
        for rel in ["."] + sorted(r for r, v in cur.ns.items() if v == "dir"):
            fd = os.open(self.h.root / rel, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self.touched.clear()
        self.h.acks.append(Ack(time.monotonic(), len(self.h.states) - 1))

    def _commit(self, new: State, what: str) -> None:
        """Record the state an operation leads to, *before* its syscall: the
        syscall may take effect in the file system and still fail in the
        writer (the daemon dies after committing the write but before the
        close that follows returns), and the checker must then allow the new
        state. A state recorded for a syscall that never took effect is
        harmless: only acknowledgements, which come after the syscall has
        returned, make a state mandatory."""
        self.h.states.append(new)
        self.h.ops.append(what)
        self.h.times.append(time.monotonic())

    # ------------------------------------------------------------ operations
    def step(self) -> bool:
        cur = self.h.current
        files = sorted(r for r, v in cur.ns.items() if isinstance(v, int))
        dirs = ["."] + sorted(r for r, v in cur.ns.items() if v == "dir")
        choice = self.rnd.choices(
            ["create", "append", "overwrite", "truncate", "rename", "unlink", "mkdir", "rmdir"],
            weights=[3 if len(files) < MAX_FILES else 0, 5 if files else 0, 4 if files else 0,
                     1 if files else 0, 2 if files else 0, 1 if files else 0,
                     1 if len(dirs) <= MAX_DIRS else 0, 1])[0]
        return getattr(self, "_" + choice)(cur, files, dirs)

    def _data(self, lo: int, hi: int) -> bytes:
        return self.rnd.randbytes(self.rnd.randint(lo, hi))

    def _newname(self, dirs: list[str], prefix: str) -> str:
        d = self.rnd.choice(dirs)
        return os.path.normpath(os.path.join(d, f"{prefix}{self.rnd.randrange(1 << 30):x}"))

    def _create(self, cur: State, files: list[str], dirs: list[str]) -> bool:
        rel = self._newname(dirs, "f")
        data = self._data(0, 40_000)
        fid = self.h.next_id
        self.h.next_id += 1
        # Two syscalls, two states: a crash between them leaves an empty file.
        # Every state is recorded *before* its syscall (see `_commit`).
        empty = cur.copy()
        empty.ns[rel] = fid
        empty.data[fid] = b""
        self.touched.add(rel)
        self._commit(empty, f"create {rel}")
        fd = os.open(self.h.root / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            full = empty.copy()
            full.data[fid] = data
            self._commit(full, f"write {rel} {len(data)}")
            os.write(fd, data)
        finally:
            os.close(fd)
        return True

    def _append(self, cur: State, files: list[str], dirs: list[str]) -> bool:
        rel = self.rnd.choice(files)
        fid = cur.ns[rel]
        assert isinstance(fid, int)
        data = self._data(1, 40_000)
        if len(cur.data[fid]) + len(data) > MAX_FILE_BYTES:
            return False
        new = cur.copy()
        new.data[fid] = cur.data[fid] + data
        self.touched.add(rel)
        self._commit(new, f"append {rel} {len(data)}")
        fd = os.open(self.h.root / rel, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return True

    def _overwrite(self, cur: State, files: list[str], dirs: list[str]) -> bool:
        rel = self.rnd.choice(files)
        fid = cur.ns[rel]
        assert isinstance(fid, int)
        old = cur.data[fid]
        off = self.rnd.randint(0, len(old) + 5000)
        data = self._data(1, 20_000)
        if off + len(data) > MAX_FILE_BYTES:
            return False
        buf = bytearray(old)
        if off > len(buf):
            buf.extend(bytes(off - len(buf)))
        buf[off:off + len(data)] = data
        new = cur.copy()
        new.data[fid] = bytes(buf)
        self.touched.add(rel)
        self._commit(new, f"overwrite {rel} {off}+{len(data)}")
        fd = os.open(self.h.root / rel, os.O_WRONLY)
        try:
            os.pwrite(fd, data, off)
        finally:
            os.close(fd)
        return True

    def _truncate(self, cur: State, files: list[str], dirs: list[str]) -> bool:
        rel = self.rnd.choice(files)
        fid = cur.ns[rel]
        assert isinstance(fid, int)
        old = cur.data[fid]
        size = self.rnd.randint(0, min(len(old) + 20_000, MAX_FILE_BYTES))
        new = cur.copy()
        new.data[fid] = old[:size] + bytes(max(0, size - len(old)))
        self.touched.add(rel)
        self._commit(new, f"truncate {rel} {size}")
        os.truncate(self.h.root / rel, size)
        return True

    def _rename(self, cur: State, files: list[str], dirs: list[str]) -> bool:
        src = self.rnd.choice(files)
        dst = self.rnd.choice(files) if self.rnd.random() < 0.3 else self._newname(dirs, "r")
        if dst == src:
            return False
        new = cur.copy()
        replaced = new.ns.get(dst)
        new.ns[dst] = new.ns.pop(src)
        if isinstance(replaced, int):
            del new.data[replaced]
        self.touched.discard(src)
        self.touched.add(dst)
        self._commit(new, f"rename {src} {dst}")
        os.rename(self.h.root / src, self.h.root / dst)
        return True

    def _unlink(self, cur: State, files: list[str], dirs: list[str]) -> bool:
        rel = self.rnd.choice(files)
        new = cur.copy()
        fid = new.ns.pop(rel)
        assert isinstance(fid, int)
        del new.data[fid]
        self.touched.discard(rel)
        self._commit(new, f"unlink {rel}")
        os.unlink(self.h.root / rel)
        return True

    def _mkdir(self, cur: State, files: list[str], dirs: list[str]) -> bool:
        rel = self._newname(dirs, "d")
        new = cur.copy()
        new.ns[rel] = "dir"
        self._commit(new, f"mkdir {rel}")
        os.mkdir(self.h.root / rel)
        return True

    def _rmdir(self, cur: State, files: list[str], dirs: list[str]) -> bool:
        empty = [d for d in dirs[1:] if not any(r.startswith(d + "/") for r in cur.ns)]
        if not empty:
            return False
        rel = self.rnd.choice(empty)
        new = cur.copy()
        del new.ns[rel]
        self._commit(new, f"rmdir {rel}")
        os.rmdir(self.h.root / rel)
        return True


# -------------------------------------------------------------------- checker


def _walk(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for d in dirnames:
            out[str(rel / d)] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            mode = os.lstat(p).st_mode
            out[str(rel / f)] = p.read_bytes() if stat.S_ISREG(mode) else f"mode {oct(mode)}"
    return out


def acked_index(h: History, horizon: float) -> int:
    """The newest state acknowledged at or before `horizon` (0: the start)."""
    return max((a.index for a in h.acks if a.t <= horizon), default=0)


def check_tree(h: History, horizon: float) -> int:
    """Raise Violation if the tree under h.root cannot be the result of a
    crash after the acknowledgements up to `horizon`. Returns the matched
    namespace state index k."""
    a = acked_index(h, horizon)
    got = _walk(h.root)
    shape = {r: ("dir" if v == "dir" else "file") for r, v in got.items()}
    matches = [k for k in range(a, len(h.states))
               if {r: ("dir" if v == "dir" else "file") for r, v in h.states[k].ns.items()} == shape]
    if not matches:
        acked = h.states[a].ns
        missing = sorted(set(acked) - set(shape))
        extra = sorted(set(shape) - set(h.states[-1].ns) - set(acked))
        raise Violation(f"{h.root}: the namespace matches no state from the acknowledged one (#{a} of "
                        f"{len(h.states) - 1}) on; acknowledged but missing: {missing[:5]}, never created: "
                        f"{extra[:5]}; last ops: {h.ops[max(0, a - 3):a + 3]}")
    errors: list[str] = []
    for k in matches:
        errors = _check_data(h, a, k, got)
        if not errors:
            return k
    raise Violation(f"{h.root}: file contents break the acknowledged state #{a} (namespace matches "
                    f"state(s) {matches[:3]}...): " + "; ".join(errors[:5]) + "\n" + _story(h, errors, horizon))


def _story(h: History, errors: list[str], horizon: float) -> str:
    """The ops on the paths named in `errors`, with their times relative to
    the horizon, and the acknowledgements around them: what a reader needs."""
    paths = {e.split(":", 1)[0] for e in errors}
    lines = []
    for i, (op, t) in enumerate(zip(h.ops, h.times, strict=False), start=1):
        if any(p in op for p in paths):
            acked = [a.t - horizon for a in h.acks if a.index >= i][:1]
            lines.append(f"  op #{i} at {t - horizon:+.3f} s: {op}; first ack covering it at "
                         f"{acked[0]:+.3f} s" if acked else f"  op #{i} at {t - horizon:+.3f} s: {op}; never acked")
    return "history (times relative to the horizon):\n" + "\n".join(lines[-12:])


def _check_data(h: History, a: int, k: int, got: dict[str, object]) -> list[str]:
    errors = []
    for rel, fid in h.states[k].ns.items():
        if fid == "dir":
            continue
        data = got[rel]
        if not isinstance(data, bytes):
            errors.append(f"{rel}: {data}, expected a regular file")
            continue
        versions = [s.data[fid] for s in h.states[a:] if fid in s.data]    # type: ignore[index]
        sizes = [len(v) for v in versions]
        if not min(sizes) <= len(data) <= max(sizes):
            errors.append(f"{rel}: size {len(data)} outside {min(sizes)}..{max(sizes)}, the sizes it had "
                          f"from the acknowledged state on")
            continue
        bad = _first_bad_byte(data, versions)
        if bad is not None:
            errors.append(f"{rel}: byte {bad} is {data[bad]:#04x}, allowed "
                          f"{sorted({v[bad] for v in versions if bad < len(v)})} (zero if shorter)")
    return errors


def _first_bad_byte(data: bytes, versions: list[bytes]) -> int | None:
    """First position whose byte no version allows, or None. Fast path: a
    version equal on a whole stretch clears it."""
    n = len(data)
    pos = 0
    step = 4096
    while pos < n:
        end = min(n, pos + step)
        chunk = data[pos:end]
        if any(v[pos:end] == chunk for v in versions if len(v) >= end):
            pos = end
            continue
        for p in range(pos, end):
            b = data[p]
            if not any((v[p] == b) if p < len(v) else (b == 0) for v in versions):
                return p
        pos = end
    return None
