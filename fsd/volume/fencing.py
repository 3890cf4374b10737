"""Pure fencing rules (SPEC §4): who may write, where the next segment goes,
which journal objects count. No I/O here: the adapter in `fsd.volume.objects` lists
and reads objects and asks these functions what they mean.

Vocabulary: an *epoch* E is one ownership period, claimed by a conditional
create of `epochs/E`. Its journal is the objects `journal/E/1, 2, ...`.
Seq 1 is a `begin` written only after the owner sealed all older epochs;
a `seal` at the first free seq ends an epoch for good.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass


def first_gap(seqs: Iterable[int]) -> int:
    """The first seq, counting from 1, that is not present.

    A seal is written there: it is the only place a writer that kept its seqs
    consecutive could write next, so taking it fences that writer."""
    present = set(seqs)
    g = 1
    while g in present:
        g += 1
    return g


def journal_run(seqs: Iterable[int]) -> tuple[int, int]:
    """(first present seq, first gap after it) of one epoch's journal keys.

    Writers fill seqs 1, 2, ... without holes, and a seal goes at the first
    gap; GC deletes a prefix (the segments folded into a snapshot). So the
    present keys are one run lo..g-1, and g is where the next key (a
    segment of the owner, or a seal) goes. No keys: (1, 1)."""
    present = set(seqs)
    if not present:
        return 1, 1
    lo = min(present)
    g = lo
    while g in present:
        g += 1
    return lo, g


def chain_breaks(start: tuple[int, int], seqs: Mapping[int, Iterable[int]], claimed: Iterable[int],
                 latest: int) -> str | None:
    """Why replay from `start` = (epoch, seq) would miss committed segments,
    or None if it would not.

    Replay reads the start epoch from seq+1 and every later epoch from 1,
    each up to its seal (or, for the newest epoch, its first gap). GC only
    deletes segments older than a snapshot it keeps, so a start older than
    that finds keys missing at the front of a run: silently replaying from
    there would lose state, so the start must be refused instead."""
    e0, s0 = start
    for e in sorted(set(claimed) | set(seqs)):
        if e < e0:
            continue
        present = {s for s in seqs.get(e, ()) if e > e0 or s > s0}
        first = s0 + 1 if e == e0 else 1
        if not present:
            if e in (latest, e0):
                continue          # the newest epoch may not have begun; the start epoch may end at start
            return f"epoch {e} has no journal left (compacted by GC)"
        if min(present) != first:
            return f"epoch {e} starts at segment {min(present)}, not {first} (compacted by GC)"
    return None


def replayable_prefix(kinds: Mapping[int, str]) -> tuple[list[int], int | None]:
    """Given seq -> kind for one epoch, return (seqs to replay, seal seq or None).

    Replay reads 1, 2, ... and stops at the first missing seq or the first
    seal: anything keyed past a seal (or past a hole) is ignored."""
    out: list[int] = []
    s = 1
    while s in kinds:
        if kinds[s] == "seal":
            return out, s
        out.append(s)
        s += 1
    return out, None


@dataclass(frozen=True)
class MountDecision:
    allowed: bool
    needs_seal: bool
    reason: str


def decide_mount(
    *,
    volume: str,
    latest_epoch: int,
    latest_sealed: bool,
    latest_host: str | None,
    latest_token: str | None,
    cache_tokens: Collection[str],
    takeover: bool,
    latest_purpose: str = "mount",
) -> MountDecision:
    """May this mount claim epoch latest_epoch + 1?

    - no epoch yet, or the newest one was sealed (clean release): yes;
    - the newest epoch is this cache directory's own crashed mount (its claim
      carries one of `cache_tokens`: the owner record's token, or the token
      the cache dir wrote down just before claiming, so a crash between the
      claim and the owner record still counts as ours): yes, after sealing
      it (same-host recovery needs no --takeover);
    - otherwise someone may still be writing: only with --takeover, which
      seals that epoch so its owner is fenced at its next commit;
    - never after a removal claim: the volume is being removed (or its
      removal crashed and must be finished), so nothing may mount it.
    """
    if latest_purpose == "remove":
        return MountDecision(False, False, f"volume {volume!r} is being removed; it cannot be mounted. Finish "
                                           f"the removal with 'ferry fs rm' (or 'ferry volume rm'), then "
                                           f"create it again if you want a new, empty volume of that name.")
    if latest_epoch == 0 or latest_sealed:
        return MountDecision(True, False, "volume was released cleanly")
    if latest_token is not None and latest_token in cache_tokens:
        return MountDecision(True, True, "recovering this cache directory's own unclean mount")
    if takeover:
        return MountDecision(True, True, f"taking over epoch {latest_epoch} from {latest_host or 'unknown host'}")
    return MountDecision(
        False,
        False,
        f"volume {volume!r} was not released cleanly: epoch {latest_epoch} is held by "
        f"host {latest_host or 'unknown'}. If that mount is gone (host lost, daemon killed), "
        f"mount again with --takeover: the old owner is fenced and everything it had "
        f"acknowledged with fsync is kept. Do not use --takeover while the other mount is alive "
        f"unless you intend to fence it.",
    )


class Fenced(Exception):
    """This mount's epoch was sealed by a newer owner: it must not acknowledge anything."""


@dataclass
class WriterPosition:
    """The running owner's place in its epoch's journal.

    Seqs are strictly consecutive: the next segment goes exactly at
    `next_seq`, and a conditional-create conflict there means a newer epoch
    sealed us (see `Committer._put_segment`, which also rules out a lost response to our
    own successful write before concluding that)."""

    epoch: int
    next_seq: int
    fenced: bool = False

    def committed(self, seq: int) -> None:
        if seq != self.next_seq:
            raise AssertionError(f"segment {seq} committed out of order (expected {self.next_seq})")
        self.next_seq += 1

    def fence(self) -> None:
        self.fenced = True
