"""Rebuilding the control state from the store (`ferry control recover`): pure.

Why: the control service records which volumes exist, their options,
snapshots, clone links and deletions in progress; the store holds every
byte of them. When the control state is lost (a new SQLite file, an empty
etcd), `ferry control recover --store URL` reads the store (fsd/tools/inventory.py)
and hands each volume and each half-done deletion to the control service,
which records what it lacks with the rules below. Running it again changes
nothing.

The rules never replace or drop what control has:

* a volume control does not know is recorded as the store describes it
  (labels are not in the store: they come back empty);
* a volume control knows with the same options keeps its record; snapshots
  the store has and control lacks are added (control's are kept);
* a volume control knows is the same volume if what its format fixes
  agrees (layout, fs, block size, compression, hash; a clone's origin):
  control's record, richer (mount options, labels), is kept. One whose
  format differs is left alone and reported (`conflict`): which one is
  right is the operator's call;
* a deletion in progress in the store that control does not know is
  recorded as a removal job for any live host to finish.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from control.leases import Cluster, Decision, Refused, Removal, Volume
from fsd.format.keys import validate_snapshot_name
from fsd.options import parse_size

RECOVERED, UPDATED, UNCHANGED, CONFLICT = "recovered", "updated", "unchanged", "conflict"


def recover_volume(c: Cluster, name: str, options: dict[str, str], created: float,
                   snapshots: dict[str, dict[str, Any]], wall: float) -> Decision:
    """One volume found in the store. Options were validated by the caller."""
    old = c.volumes.get(name)
    if old is None:
        v = Volume(name=name, options=dict(options), labels={}, created=created or wall,
                   snapshots={k: dict(s) for k, s in snapshots.items()})
        return Decision(put_volumes=[v], result={"status": RECOVERED})
    if old.removing is not None:
        return Decision(result={"status": CONFLICT, "message": f"volume {name!r} is being removed at control"})
    if format_of(old.options) != format_of(options):
        return Decision(result={"status": CONFLICT,
                                "message": f"control has volume {name!r} with options {old.options}, the store "
                                           f"with {options}; nothing changed (remove one of them to settle it)"})
    missing = {k: dict(s) for k, s in snapshots.items() if k not in old.snapshots}
    if not missing:
        return Decision(result={"status": UNCHANGED})
    v = replace(old, snapshots={**old.snapshots, **missing})
    return Decision(put_volumes=[v], result={"status": UPDATED, "snapshots_added": sorted(missing)})


def format_of(options: dict[str, str]) -> tuple[Any, ...]:
    """What a volume's format fixes, with defaults filled in: two option sets that
    give the same tuple describe the same kind of volume (the store cannot tell
    `-o compression=none` from no option, nor keeps mount options)."""
    if "from" in options:
        return ("clone", options["from"].partition("@")[0])
    layout = options.get("layout", "files")
    try:
        block_size: int | str | None = parse_size(options.get("block_size", "1M"))
    except ValueError:
        block_size = options.get("block_size")
    return (layout, options.get("fs", "ext4") if layout == "block" else None, block_size,
            options.get("compression", "none"), options.get("hash", "blake3"))


def recover_removal(c: Cluster, name: str, root: str, wall: float) -> Decision:
    """A root marked removed in the store whose objects are not all deleted yet."""
    if root in c.removals:
        return Decision(result={"status": UNCHANGED})
    # host "": no live host has it; the first live host that asks takes it (removals.claim_jobs)
    r = Removal(root=root, name=name, host="", requested=wall)
    return Decision(put_removals=[r], result={"status": RECOVERED})


def check_snapshots(snapshots: Any) -> dict[str, dict[str, Any]]:
    """The snapshot map of a recover request, or Refused(bad_request)."""
    if not isinstance(snapshots, dict) or len(snapshots) > 100_000:
        raise Refused("bad_request", "snapshots must be a map of name -> {position, created}")
    out = {}
    for k, s in snapshots.items():
        pos = s.get("position") if isinstance(s, dict) else None
        if (not isinstance(k, str) or not isinstance(pos, list) or len(pos) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2 ** 63 for x in pos)):
            raise Refused("bad_request", f"snapshot {k!r}: needs position [epoch, seq]")
        try:
            validate_snapshot_name(k)
        except ValueError as e:
            raise Refused("bad_request", str(e)) from None
        created = s.get("created", 0.0)
        out[k] = {"position": list(pos), "created": float(created) if isinstance(created, (int, float)) else 0.0}
    return out
