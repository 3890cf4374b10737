"""A writer for crash tests: random file operations under a directory, each
made durable with fsync, logged to a local file around every operation.

    python -m tests.helpers.fsync_writer DIR LOG SEED

Each operation writes a `begin` line (what it is about to do) and, once
every fsync of it returned, an `ack` line; the log is flushed and fsynced
after each line, on a disk that survives the crash. `acked_model` reads a
log back into what a crash may and may not have lost. The writer runs until
it is killed or an operation fails (a fenced or dead mount).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.mount import fsync_dir


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(root: Path, log_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    files: dict[str, bytes] = {}
    log = open(log_path, "a")  # noqa: SIM115 - open for the life of the process, which ends by kill -9

    def note(**entry: object) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()
        os.fsync(log.fileno())

    for d in range(4):
        (root / f"d{d}").mkdir(parents=True, exist_ok=True)
    fsync_dir(root)
    n = 0
    while True:
        n += 1
        op = rng.choice(["new", "new", "rewrite", "append", "delete"]) if files else "new"
        if op == "new":
            rel = f"d{rng.randrange(4)}/f{n}"
            data = rng.randbytes(rng.choice([0, 100, 4096, 70_000, 300_000]))
            note(op="begin", kind=op, path=rel, sha=_sha(data))
            with open(root / rel, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir((root / rel).parent)
            files[rel] = data
        elif op == "rewrite":
            rel = rng.choice(sorted(files))
            data = rng.randbytes(rng.choice([10, 5000, 150_000]))
            note(op="begin", kind=op, path=rel, sha=_sha(data))
            tmp = root / (rel + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, root / rel)
            fsync_dir((root / rel).parent)
            files[rel] = data
        elif op == "append":
            rel = rng.choice(sorted(files))
            extra = rng.randbytes(rng.choice([1, 3000, 60_000]))
            data = files[rel] + extra
            note(op="begin", kind=op, path=rel, sha=_sha(data), old=_sha(files[rel]), old_len=len(files[rel]))
            with open(root / rel, "ab") as f:
                f.write(extra)
                f.flush()
                os.fsync(f.fileno())
            files[rel] = data
        else:
            rel = rng.choice(sorted(files))
            note(op="begin", kind=op, path=rel, sha=None)
            os.unlink(root / rel)
            fsync_dir((root / rel).parent)
            del files[rel]
        note(op="ack", path=rel)


@dataclass
class Model:
    """What the log says the volume must hold after a crash."""

    acked: dict[str, str | None] = field(default_factory=dict)   # path -> sha (None: deleted)
    inflight: dict | None = None                                   # the begun, unacknowledged operation
    acks: int = 0

    def check(self, root: Path) -> list[str]:
        """Differences between the tree under `root` and what was acknowledged."""
        problems = []
        for rel, sha in sorted(self.acked.items()):
            p = root / rel
            got = _sha(p.read_bytes()) if p.exists() else None
            allowed = {sha}
            fl = self.inflight
            if fl is not None and fl["path"] == rel:
                allowed.add(fl["sha"])
                if fl["kind"] == "append" and got is not None:
                    # an unacknowledged append may be partly there: old data + a prefix of the new
                    data = p.read_bytes()
                    if len(data) >= fl["old_len"] and _sha(data[:fl["old_len"]]) == fl["old"]:
                        allowed.add(got)
            if got not in allowed:
                problems.append(f"{rel}: acknowledged sha {sha}, found {got}")
        return problems


def acked_model(log_path: Path, model: Model | None = None) -> Model:
    model = model or Model()
    model.inflight = None
    for line in log_path.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            break                      # a torn last line: the writer died writing it
        if e["op"] == "begin":
            model.inflight = e
        elif e["op"] == "ack" and model.inflight is not None:
            model.acked[e["path"]] = model.inflight["sha"]
            model.inflight = None
            model.acks += 1
    return model


if __name__ == "__main__":
    try:
        run(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
    except OSError as e:
        print(f"fsync_writer: stopped: {e}", file=sys.stderr)
        sys.exit(3)
