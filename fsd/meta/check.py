"""fsck invariants of a `MetaState`.

Pure and read-only: `ferry fs fsck` runs it on a replayed volume and the
property tests run it after every operation, so a bug in `MetaOps` or in
replay shows up as a named inode rather than as a strange file later.
"""
from __future__ import annotations

from stat import S_IFDIR, S_IFLNK, S_IFREG

from fsd.meta.state import ROOT_INO, S_FMT, MetaState


def find_orphans(state: MetaState) -> list[int]:
    """Inodes with no name left (unlinked while open); not a problem, they
    are freed at the next mount."""
    return sorted(ino for ino, n in state.inodes.items() if n.nlink == 0)


def check_state(state: MetaState) -> list[str]:
    """Every broken invariant, one readable line each (empty: consistent)."""
    problems: list[str] = []
    inodes = state.inodes
    root = inodes.get(ROOT_INO)
    if root is None:
        problems.append(f"root directory (inode {ROOT_INO}) is missing")
    elif root.mode & S_FMT != S_IFDIR:
        problems.append(f"root inode {ROOT_INO} is not a directory (mode {root.mode:#o})")

    refs: dict[int, int] = {}          # inode -> number of entries naming it
    subdirs: dict[int, int] = {}       # directory -> number of subdirectory entries
    parent_of: dict[int, int] = {}     # directory -> a directory holding an entry for it
    for d, m in state.entries.items():
        dn = inodes.get(d)
        if dn is None:
            if m:
                problems.append(f"entries of missing directory inode {d}: {sorted(m)[:5]}")
            continue
        if dn.mode & S_FMT != S_IFDIR:
            if m:
                problems.append(f"inode {d} has directory entries but is not a directory")
            continue
        next_cookie = state.next_cookie.get(d, 1)
        for name, (child, cookie) in m.items():
            c = inodes.get(child)
            if c is None:
                problems.append(f"directory {d} entry {name!r} points to missing inode {child}")
                continue
            if cookie < 1 or cookie >= next_cookie:
                problems.append(f"directory {d} entry {name!r}: cookie {cookie} outside 1..{next_cookie - 1}")
            refs[child] = refs.get(child, 0) + 1
            if c.mode & S_FMT == S_IFDIR:
                subdirs[d] = subdirs.get(d, 0) + 1
                parent_of.setdefault(child, d)
                if state.dir_parent.get(child) != d:
                    problems.append(f"directory {child}: parent index says {state.dir_parent.get(child)}, "
                                    f"entry is in {d}")

    for ino, n in inodes.items():
        fmt = n.mode & S_FMT
        nref = refs.get(ino, 0)
        if ino >= state.next_ino:
            problems.append(f"inode {ino} is not below next_ino {state.next_ino}")
        if fmt == S_IFDIR:
            want = 0 if ino == ROOT_INO else 1
            if nref != want:
                problems.append(f"directory {ino} has {nref} entries naming it, expected {want}")
            if n.nlink != 2 + subdirs.get(ino, 0):
                problems.append(f"directory {ino} has nlink {n.nlink}, expected "
                                f"{2 + subdirs.get(ino, 0)} (2 + subdirectories)")
        elif n.nlink != nref:
            problems.append(f"inode {ino} has nlink {n.nlink} but {nref} entries name it")
        if fmt == S_IFLNK:
            if n.target is None or n.size != len(n.target):
                problems.append(f"symlink {ino}: target {n.target!r} does not match size {n.size}")
        elif n.target is not None:
            problems.append(f"inode {ino} is not a symlink but has a target")

    bs = state.block_size
    for ino, bm in state.blocks.items():
        owner = inodes.get(ino)
        if owner is None:
            if bm:
                problems.append(f"blocks of missing inode {ino}")
            continue
        if owner.mode & S_FMT != S_IFREG:
            if bm:
                problems.append(f"inode {ino} has blocks but is not a regular file")
            continue
        for idx, ref in bm.items():
            if not 0 <= ref.length <= bs:
                problems.append(f"inode {ino} block {idx}: length {ref.length} outside 0..{bs}")
            elif idx * bs + ref.length > owner.size:
                problems.append(f"inode {ino} block {idx}: ends at {idx * bs + ref.length}, "
                                f"beyond size {owner.size}")

    for ino, pm in state.patches.items():
        owner = inodes.get(ino)
        if owner is None or owner.mode & S_FMT != S_IFREG:
            problems.append(f"inline data (PATCH) of inode {ino}, which is not a regular file")
            continue
        for idx in pm:
            end = idx * bs + state.block_length(ino, idx)
            if end > owner.size:
                problems.append(f"inode {ino} block {idx}: inline data ends at {end}, beyond size {owner.size}")

    problems.extend(_cycles(parent_of))
    reachable = _reachable(state)
    for ino, n in inodes.items():
        if ino != ROOT_INO and n.nlink > 0 and ino not in reachable:
            problems.append(f"inode {ino} (nlink {n.nlink}) is not reachable from the root")
    return problems


def _reachable(state: MetaState) -> set[int]:
    seen = {ROOT_INO}
    todo = [ROOT_INO]
    while todo:
        for child, _ in state.entries.get(todo.pop(), {}).values():
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _cycles(parent_of: dict[int, int]) -> list[str]:
    """Directory loops, each reported once (a loop never reaches the root)."""
    out: list[str] = []
    done: set[int] = set()
    for start in parent_of:
        path: list[int] = []
        on_path: set[int] = set()
        d: int | None = start
        while d is not None and d not in done and d not in on_path:
            path.append(d)
            on_path.add(d)
            d = parent_of.get(d)
        if d is not None and d in on_path:
            loop = path[path.index(d):]
            out.append(f"directory cycle: {' -> '.join(map(str, loop))} -> {d}")
        done.update(path)
    return out
