"""`ferry volume resize NAME SIZE` at the control service: pure.

A layout=block volume's size is the size of its image. The control service
records the size in the volume's options (`size`), which every agent passes
to `ferry fs mount -o size=`: a mount grows a smaller image, then its
filesystem, before anything uses it (fsd/block/stack.py). So the size
belongs to the volume, whichever host mounts it next.

If a live host holds the volume, it grows it online now, as a job of the
kind snapshots use (control/snapshots.py): the size is recorded only once
that host reports success, so a grow it refuses records nothing. Without a
live holder the size is recorded at once and applies at the next mount.
Volumes only grow: neither ext4 nor XFS shrinks online.
"""
from __future__ import annotations

from dataclasses import replace

from control.leases import Cluster, Decision, Refused, Volume, need_volume
from control.snapshots import RESIZE, SnapJob
from fsd.format.superblock import DEFAULT_IMAGE_SIZE, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from fsd.options import parse_size

JOB_KEY = "@resize"       # the job's `snap` field: one resize of a volume at a time


def _defining(c: Cluster, v: Volume, option: str) -> Volume:
    """The volume whose options set `option` for `v`: `v` itself, or for a
    clone that does not set it, its origin (and so on up the chain)."""
    seen = set()
    while option not in v.options and "from" in v.options and v.name not in seen:
        seen.add(v.name)
        origin = c.volumes.get(v.options["from"].split("@", 1)[0])
        if origin is None:
            break
        v = origin
    return v


def layout(c: Cluster, v: Volume) -> str:
    """The volume's layout from its options; a clone has its origin's."""
    return _defining(c, v, "layout").options.get("layout", "files")


def recorded_size(c: Cluster, v: Volume) -> int:
    """The image size the volume's options give (a clone starts at its origin's)."""
    return parse_size(_defining(c, v, "size").options.get("size", DEFAULT_IMAGE_SIZE)) // 4096 * 4096


def request(c: Cluster, volume: str, size_text: str, now: float) -> Decision:
    """Record (no live holder) or hand out (a live holder grows it now) a
    new size; Refused says what is wrong. result["status"]: "unchanged",
    "recorded" or "pending" (then "host" and "seq" name the job)."""
    v = need_volume(c, volume)
    if v.removing is not None:
        raise Refused("conflict", f"volume {volume!r} is being removed")
    if layout(c, v) != "block":
        raise Refused("bad_request", f"volume {volume!r} is a layout=files volume: it has no fixed size to grow "
                                     "(df shows its size= option, which takes effect when it is next mounted)")
    try:
        size = parse_size(size_text) // 4096 * 4096
    except ValueError as e:
        raise Refused("bad_request", str(e)) from None
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise Refused("bad_request", f"size must be between 64M and 1P, not {size_text!r}")
    current = recorded_size(c, v)
    if size < current:
        raise Refused("bad_request", f"volume {volume!r} is {current} bytes; it can only grow, not shrink to "
                                     f"{size} (neither ext4 nor XFS shrinks online). To make it smaller, copy "
                                     "its files into a new, smaller volume")
    if size == current:
        return Decision(result={"status": "unchanged", "size": size})
    if (volume, JOB_KEY) in c.snap_jobs:
        raise Refused("conflict", f"volume {volume!r} is being resized right now")
    holder = c.holder(volume, now)
    if holder is None:
        return Decision(put_volumes=[with_size(v, size)], result={"status": "recorded", "size": size})
    job = SnapJob(volume, JOB_KEY, RESIZE, holder, c.snap_seq + 1, {"size": str(size)})
    return Decision(put_snap_jobs=[job], result={"status": "pending", "host": holder, "seq": job.seq,
                                                 "size": size})


def with_size(v: Volume, size: int) -> Volume:
    return replace(v, options={**v.options, "size": str(size)})
