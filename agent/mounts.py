"""Reference counting of Docker mount IDs per volume. Pure.

Why by ID: Docker calls Mount once per container using a volume and Unmount
when that container stops, each with the container's mount ID. Two
containers may share a volume on one host; the filesystem daemon must run
while any of them does, and stop (commit everything, release the lease)
after the last one. Counting IDs instead of calls makes a retried Mount
idempotent and an Unmount of an unknown ID detectable.

The table is authoritative for "is this volume in use here" (the control
service only has the last heartbeat's view), so it is persisted by
`agent/statefile.py` after every change and survives an agent restart.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class UnknownMount(Exception):
    """Unmount of a mount ID this host does not have for that volume."""


@dataclass(frozen=True)
class Outcome:
    """What a change means for the volume's filesystem daemon.

    start: first ID - the daemon must run (acquire lease, start fsd)
    stop:  last ID gone - stop fsd and release the lease
    """

    start: bool = False
    stop: bool = False
    changed: bool = True


@dataclass
class MountTable:
    volumes: dict[str, set[str]] = field(default_factory=dict)

    # ---------------------------------------------------------- queries
    def ids(self, volume: str) -> set[str]:
        return set(self.volumes.get(volume, ()))

    def count(self, volume: str) -> int:
        return len(self.volumes.get(volume, ()))

    def in_use(self, volume: str) -> bool:
        return self.count(volume) > 0

    def names(self) -> list[str]:
        return sorted(v for v, ids in self.volumes.items() if ids)

    # ---------------------------------------------------------- changes
    def add(self, volume: str, mount_id: str) -> Outcome:
        ids = self.volumes.setdefault(volume, set())
        if mount_id in ids:
            return Outcome(changed=False)
        first = not ids
        ids.add(mount_id)
        return Outcome(start=first)

    def remove(self, volume: str, mount_id: str) -> Outcome:
        ids = self.volumes.get(volume)
        if not ids or mount_id not in ids:
            raise UnknownMount(f"volume {volume!r} has no mount with ID {mount_id!r} on this host"
                               + (f" (mounted here by {len(ids)} other container(s))" if ids else
                                  " (it is not mounted here)"))
        ids.discard(mount_id)
        if not ids:
            del self.volumes[volume]
            return Outcome(stop=True)
        return Outcome()

    def drop(self, volume: str) -> set[str]:
        """Forget every ID of a volume (its lease was lost); returns them."""
        return self.volumes.pop(volume, set())

    # ---------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return {"volumes": {v: sorted(ids) for v, ids in sorted(self.volumes.items()) if ids}}

    @classmethod
    def from_dict(cls, d: Any) -> "MountTable":
        """ValueError for anything that is not a table we wrote."""
        if not isinstance(d, dict) or not isinstance(d.get("volumes", {}), dict):
            raise ValueError("mount table must be an object with a 'volumes' object")
        out: dict[str, set[str]] = {}
        for v, ids in d.get("volumes", {}).items():
            if not isinstance(v, str) or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError(f"mount table entry {v!r} must map a name to a list of mount IDs")
            if ids:
                out[v] = set(ids)
        return cls(volumes=out)
