"""The agent's persistent state: `<state-dir>/state.json`, written atomically.

Why on disk: Docker does not re-send Mount after an agent restart, so the
mount IDs per volume must outlive the agent process to keep reference
counting right (SPEC §5: the agent's state survives its own restart).
Written as temp file + fsync + rename + directory fsync, so a crash leaves
either the old or the new state, never a torn one. Small and rare (one
write per Mount/Unmount), so callers run it in a worker thread.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from agent.volumes import Volumes

log = logging.getLogger("ferry.agent.state")
VERSION = 1


class StateFile:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"

    def load(self) -> Volumes:
        """The saved table; empty when there is none. An unreadable file is kept
        aside (state.json.bad) and reported, not silently overwritten."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return Volumes()
        try:
            d = json.loads(raw)
            if not isinstance(d, dict) or d.get("version") != VERSION:
                raise ValueError(f"unsupported state version {d.get('version') if isinstance(d, dict) else d!r}")
            return Volumes.from_dict(d)
        except ValueError as e:
            bad = self.path.with_name("state.json.bad")
            os.replace(self.path, bad)
            log.error("agent state %s is unreadable (%s); moved it to %s and starting with no mount IDs",
                      self.path, e, bad)
            return Volumes()

    def save(self, table: Volumes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"version": VERSION, **table.to_dict()}, indent=1).encode()
        tmp = self.path.with_name("state.json.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
