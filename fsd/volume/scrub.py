"""Background scrub: the owning daemon re-reads its live data objects at a
bounded rate and verifies each one against its content hash, so damage in
the store (a flipped bit, a truncated or lost object) is found and reported
(log, status, metrics) before a reader meets it as EIO.

Why in the mounted daemon: it alone knows which objects are live right now,
and a volume that is never unmounted would otherwise never be checked
(`ferry fs fsck --verify-data` needs the volume unmounted or a quiet store).

Pure part, no I/O: `plan_pass` (which objects a pass visits: each distinct
live reference once, in a stable order, with one place that uses it),
`Pacer` (how long to wait after a read so the scrub stays under its byte
rate), `ScrubProgress` (what was checked and found, and where a pass
resumes: it is saved in the cache directory, so a volume that is mounted
and unmounted often still completes its passes). `Scrubber` is the thin
adapter: reads in worker threads, the clock given to it.

An object that is missing is damage only if it is still referenced once
the read has failed (GC deletes what an overwrite made garbage; such an
object may vanish between the plan and the read).
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from fsd.format import keys
from fsd.format.dataobj import HashSpec, decode_block
from fsd.format.framing import CorruptObject
from fsd.meta.state import BlockRef
from fsd.store.base import NotFound, ObjectStore

log = logging.getLogger("ferry.scrub")

MAX_FINDINGS = 100       # kept in the progress file and the status; the log has every one
FIRST_PASS_DELAY = 600.0


@dataclass(frozen=True, order=True)
class Target:
    """One data object a pass reads, and a place that uses it (for the report)."""
    src: int
    hash: bytes
    epoch: int
    ino: int
    idx: int


def plan_pass(blocks: Mapping[int, Mapping[int, BlockRef]]) -> list[Target]:
    """Every distinct live object once, sorted by (src, hash, epoch): a pass
    interrupted by an unmount resumes after the last object it finished."""
    seen: dict[tuple[int, bytes, int], Target] = {}
    for ino, refs in blocks.items():
        for idx, ref in refs.items():
            k = (ref.src, ref.hash, ref.epoch)
            if k not in seen:
                seen[k] = Target(ref.src, ref.hash, ref.epoch, ino, idx)
    return sorted(seen.values())


def resume_at(plan: list[Target], after: tuple[int, bytes, int] | None) -> int:
    """Index of the first target past `after` (0 for a new pass)."""
    if after is None:
        return 0
    lo, hi = 0, len(plan)
    while lo < hi:
        mid = (lo + hi) // 2
        if (plan[mid].src, plan[mid].hash, plan[mid].epoch) <= after:
            lo = mid + 1
        else:
            hi = mid
    return lo


class Pacer:
    """A byte budget: after reading n bytes at `now`, the next read may start
    at `next_at`. Idle time is not saved up (no burst after a pause)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.next_at = 0.0

    def delay_after(self, nbytes: int, now: float) -> float:
        self.next_at = max(self.next_at, now) + nbytes / self.rate
        return max(0.0, self.next_at - now)


@dataclass
class ScrubProgress:
    """Counts since the volume was first scrubbed on this cache, and where the
    current pass is. `wall` times are seconds since the epoch."""
    passes: int = 0
    checked_objects: int = 0
    checked_bytes: int = 0
    damaged_total: int = 0
    last_pass_started: float | None = None
    last_pass_finished: float | None = None
    pass_started: float | None = None             # the pass under way, if any
    cursor: tuple[int, str, int] | None = None    # (src, hash hex, epoch) of the last object done
    pass_done: int = 0
    pass_total: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)   # this pass's and the last one's

    def due(self, wall: float, interval: float) -> float:
        """Seconds until the next pass should start (0: now). A pass under way resumes at
        once; the first pass on this cache waits a while (at most FIRST_PASS_DELAY), so a
        volume that was just mounted serves its first reads without the scrub beside them."""
        if self.pass_started is not None:
            return 0.0
        if self.last_pass_started is None:
            return min(interval, FIRST_PASS_DELAY)
        return max(0.0, self.last_pass_started + interval - wall)

    def begin(self, wall: float, total: int) -> None:
        if self.pass_started is None:
            self.pass_started, self.cursor, self.pass_done = wall, None, 0
            self.findings = [f for f in self.findings if f.get("pass") == self.passes][-MAX_FINDINGS:]
        self.pass_total = total

    def checked(self, t: Target, nbytes: int, problem: str | None, key: str) -> None:
        self.checked_objects += 1
        self.checked_bytes += nbytes
        self.pass_done += 1
        self.cursor = (t.src, t.hash.hex(), t.epoch)
        if problem is not None:
            self.damaged_total += 1
            if len(self.findings) < MAX_FINDINGS:
                self.findings.append({"pass": self.passes + 1, "key": key, "inode": t.ino, "block": t.idx,
                                      "problem": problem})

    def finish(self, wall: float) -> None:
        self.passes += 1
        self.last_pass_started, self.last_pass_finished = self.pass_started, wall
        self.pass_started, self.cursor = None, None

    def cursor_key(self) -> tuple[int, bytes, int] | None:
        return None if self.cursor is None else (self.cursor[0], bytes.fromhex(self.cursor[1]), self.cursor[2])

    def damaged_in_last_pass(self) -> int:
        """Damage the last finished pass (or the one under way) found."""
        return sum(1 for f in self.findings if f.get("pass") in (self.passes, self.passes + 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScrubProgress:
        p = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        if p.cursor is not None:
            p.cursor = (int(p.cursor[0]), str(p.cursor[1]), int(p.cursor[2]))
        return p


def load_progress(path: Path) -> ScrubProgress:
    try:
        return ScrubProgress.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return ScrubProgress()       # first scrub here, or a damaged file: start a new pass


def save_progress(path: Path, p: ScrubProgress) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(p.to_dict()))
    os.replace(tmp, path)


@dataclass(frozen=True)
class ScrubConfig:
    interval: float          # from the start of one pass to the start of the next; 0: never
    rate: float              # bytes per second at most
    save_every: float = 30.0  # seconds between progress saves within a pass


class Scrubber:
    """Runs passes for one mounted volume. `blocks()` gives the live block
    map (read on the trio thread, never across an await), `wall()` the time
    of day for the progress file; sleeping uses trio's clock."""

    def __init__(self, *, volume: str, roots: tuple[str, ...], store: ObjectStore, content_hash: HashSpec,
                 blocks: Callable[[], Mapping[int, Mapping[int, BlockRef]]], progress_path: Path,
                 cfg: ScrubConfig, wall: Callable[[], float]) -> None:
        self.volume, self.roots, self.store, self.content_hash = volume, roots, store, content_hash
        self.blocks, self.path, self.cfg, self.wall = blocks, progress_path, cfg, wall
        self.progress = load_progress(progress_path)

    def live(self, t: Target) -> bool:
        ref = self.blocks().get(t.ino, {}).get(t.idx)
        if ref is not None and (ref.src, ref.hash, ref.epoch) == (t.src, t.hash, t.epoch):
            return True
        return any((r.src, r.hash, r.epoch) == (t.src, t.hash, t.epoch)
                   for refs in self.blocks().values() for r in refs.values())

    def _check(self, key: str, t: Target) -> tuple[int, str | None]:
        """(bytes read, problem or None); runs in a worker thread."""
        try:
            raw = self.store.get(key)
        except NotFound:
            return 0, "missing"
        try:
            decode_block(raw, t.hash, key, self.content_hash)
        except CorruptObject as e:
            return len(raw), f"damaged: {e}"
        return len(raw), None

    async def _save(self) -> None:
        try:
            await trio.to_thread.run_sync(save_progress, self.path, self.progress)
        except OSError as e:
            log.warning("volume %s: cannot save scrub progress in %s (%s)", self.volume, self.path, e)

    async def run_pass(self) -> None:
        plan = plan_pass(self.blocks())
        p = self.progress
        p.begin(self.wall(), len(plan))
        start = resume_at(plan, p.cursor_key())
        if start == 0 and p.pass_done == 0:
            log.info("volume %s: scrub pass %d started: %d data objects, at most %.1f MB/s",
                     self.volume, p.passes + 1, len(plan), self.cfg.rate / 1e6)
        pacer = Pacer(self.cfg.rate)
        saved_at = trio.current_time()
        for t in plan[start:]:
            if t.src >= len(self.roots):
                continue
            key = keys.data_key(self.roots[t.src], t.hash, t.epoch)
            nbytes, problem = await trio.to_thread.run_sync(self._check, key, t)
            if problem == "missing" and not self.live(t):
                problem = None            # GC freed it after an overwrite: not damage
            if problem is not None:
                log.error("volume %s: scrub found data object %s %s (inode %d, block %d); reading that "
                          "block will fail with EIO: restore the file from a snapshot or backup",
                          self.volume, key, problem, t.ino, t.idx)
            p.checked(t, nbytes, problem, key)
            now = trio.current_time()
            if now - saved_at >= self.cfg.save_every:
                await self._save()
                saved_at = now
            await trio.sleep(pacer.delay_after(max(nbytes, 1), now))
        p.finish(self.wall())
        found = p.damaged_in_last_pass()
        (log.error if found else log.info)(
            "volume %s: scrub pass %d finished: %d data objects checked, %d damaged or missing",
            self.volume, p.passes, p.pass_total, found)
        await self._save()

    async def run(self) -> None:
        """Passes every `interval` until cancelled (the unmount saves where it was)."""
        if self.cfg.interval <= 0:
            return
        try:
            while True:
                await trio.sleep(self.progress.due(self.wall(), self.cfg.interval))
                await self.run_pass()
        finally:
            with trio.CancelScope(shield=True):
                await self._save()

    def summary(self) -> dict[str, Any]:
        """For the status file and the agent's metrics."""
        p = self.progress
        return {"passes": p.passes, "checked_objects": p.checked_objects, "checked_bytes": p.checked_bytes,
                "damaged_total": p.damaged_total, "damaged_last_pass": p.damaged_in_last_pass(),
                "last_pass_started": p.last_pass_started, "last_pass_finished": p.last_pass_finished,
                "pass_done": p.pass_done,
                "pass_total": p.pass_total, "running": p.pass_started is not None,
                "findings": p.findings[-10:]}
