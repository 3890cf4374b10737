"""`ferry control backup`, `ferry control restore` and `ferry control recover`:
the control state itself, kept, moved and rebuilt.

* backup reads the state store directly (SQLite even while its service runs:
  a read-only snapshot; etcd at one revision) and writes every persistent
  record - volumes, hosts, leases, deletion jobs, the job counter - to a
  file. What each replica learns again within a heartbeat (liveness,
  moves, pending jobs) is left out.
* restore writes such a file into an empty state store, SQLite or etcd, so
  an operator moves between backends with backup + restore.
* recover rebuilds the records from the object store when the state is
  lost and no backup is at hand (control/recover.py says what it changes).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

from cli.common import client_args, progress_reporter, run_client
from cli.errors import Failure, UsageError

BACKUP_FORMAT = "ferry-control-backup"
BACKUP_VERSION = 1
PERSISTENT = ("volumes/", "hosts/", "leases/", "removals/", "counters/")
EXAMPLES = """\
examples:
  ferry control backup --state sqlite:/var/lib/ferry/control.db -o control-$(date +%F).bak
  ferry control restore --state etcd://10.0.0.1:2379,10.0.0.2:2379 control-2026-12-07.bak
  ferry control recover --store 's3://ferry-volumes?endpoint=https://s3.example.net' --dry-run
  ferry control recover --store 's3://ferry-volumes?endpoint=https://s3.example.net'
"""


def add_state_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", required=True, metavar="URL",
                   help="sqlite:PATH (one control service) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX/] "
                        "(several replicas over one etcd cluster; keys under /ferry/ by default)")
    e = p.add_argument_group("etcd (with --state etcd://...)")
    e.add_argument("--etcd-ca", metavar="FILE", help="CA that signed the etcd members' certificates (uses https)")
    e.add_argument("--etcd-cert", metavar="FILE", help="client certificate for etcd --client-cert-auth")
    e.add_argument("--etcd-key", metavar="FILE", help="private key of --etcd-cert")
    e.add_argument("--etcd-user", metavar="NAME", help="etcd user (etcd auth enabled)")
    e.add_argument("--etcd-password-file", metavar="FILE", help="file holding that user's password")
    e.add_argument("--etcd-timeout", type=float, default=10.0, metavar="S",
                   help="how long one etcd request may try every member before it fails (default 10)")


def etcd_options(args: argparse.Namespace) -> Any:
    from control.etcd_client import EtcdOptions
    if bool(args.etcd_cert) != bool(args.etcd_key):
        raise UsageError("--etcd-cert and --etcd-key go together")
    if bool(args.etcd_user) != bool(args.etcd_password_file):
        raise UsageError("--etcd-user and --etcd-password-file go together")
    if not args.etcd_timeout > 0:
        raise UsageError("--etcd-timeout must be positive")
    password = None
    if args.etcd_password_file:
        try:
            password = Path(args.etcd_password_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UsageError(f"cannot read --etcd-password-file {args.etcd_password_file}: {e.strerror}") from None
    for f in (args.etcd_ca, args.etcd_cert, args.etcd_key):
        if f and not os.path.isfile(f):
            raise UsageError(f"etcd TLS file {f} does not exist")
    return EtcdOptions(ca=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key, user=args.etcd_user,
                       password=password, timeout=args.etcd_timeout)


def open_state_from_args(args: argparse.Namespace, *, read_only: bool = False) -> Any:
    from control.state import StateError
    from control.stores import open_state
    try:
        if read_only and args.state.startswith("sqlite:"):
            from control.sqlite_state import SqliteState
            path = args.state[len("sqlite:"):]
            if not os.path.exists(path):
                raise UsageError(f"--state: {path} does not exist")
            return SqliteState(path, read_only=True)
        return open_state(args.state, etcd_options(args))
    except ValueError as e:
        raise UsageError(f"--state: {e}") from None
    except StateError as e:
        raise Failure(str(e)) from None


# ----------------------------------------------------------------- backup
def cmd_backup(args: argparse.Namespace) -> int:
    import trio

    from control.state import StateError
    state = open_state_from_args(args, read_only=True)

    async def read() -> Any:
        try:
            return await state.scan("")
        finally:
            await state.aclose()
    try:
        snap = trio.run(read)
    except StateError as e:
        raise Failure(f"cannot read the control state: {e}") from None
    rows = [[k, v] for k, v, _ in snap.rows if k.startswith(PERSISTENT)]
    blob = msgpack.packb({"format": BACKUP_FORMAT, "version": BACKUP_VERSION, "taken": time.time(),
                          "source": state.kind, "revision": snap.revision, "rows": rows}, use_bin_type=True)
    counts = _counts(rows)
    if args.output == "-":
        sys.stdout.buffer.write(blob)
    else:
        tmp = args.output + ".tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.output)
    print(f"backed up {counts} from {state.kind} (revision {snap.revision})"
          + ("" if args.output == "-" else f" to {args.output}"), file=sys.stderr)
    return 0


def _counts(rows: list) -> str:
    kinds = {"volumes/": "volumes", "hosts/": "hosts", "leases/": "leases", "removals/": "deletions in progress"}
    return ", ".join(f"{sum(1 for k, _ in rows if k.startswith(p))} {name}" for p, name in kinds.items())


def read_backup(path: str) -> list[list[Any]]:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    try:
        doc = msgpack.unpackb(data, raw=False)
    except Exception:  # noqa: BLE001 - msgpack raises many kinds
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != BACKUP_FORMAT:
        raise UsageError(f"{path} is not a ferry control backup (made by: ferry control backup)")
    if doc.get("version") != BACKUP_VERSION:
        raise UsageError(f"{path} is a control backup of version {doc.get('version')}; this ferry reads "
                         f"version {BACKUP_VERSION}")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
                                             and r[0].startswith(PERSISTENT) for r in rows):
        raise UsageError(f"{path}: the backup's rows are damaged; nothing was restored")
    return rows


def cmd_restore(args: argparse.Namespace) -> int:
    import trio

    from control.state import ANY, NEW, Op, StateError
    rows = read_backup(args.file)
    state = open_state_from_args(args)

    async def write() -> int:
        try:
            existing = [k for k, _, _ in (await state.scan("")).rows if k.startswith(PERSISTENT)]
            if existing and not args.force:
                raise UsageError(f"the control state at {args.state} is not empty ({len(existing)} records); "
                                 "restore into an empty one, or pass --force to write the backup over it")
            expected = ANY if args.force else NEW
            for i in range(0, len(rows), 100):
                await state.txn([Op(k, expected, v) for k, v in rows[i:i + 100]])
            return len(rows)
        finally:
            await state.aclose()
    try:
        n = trio.run(write)
    except StateError as e:
        raise Failure(f"restore stopped: {e} (run it again with --force to finish)") from None
    print(f"restored {_counts(rows)} ({n} records) into {args.state}; start the control service on it")
    return 0


# ---------------------------------------------------------------- recover
def cmd_recover(args: argparse.Namespace) -> int:
    """Rebuild control's records from the store (control/recover.py)."""
    from cli.common import store_url
    from fsd.store import KeyRing, open_store
    from fsd.tools import inventory
    url = store_url(args)
    key_dir = args.key_dir or os.environ.get("FERRY_KEY_DIR")
    try:
        store = open_store(url, ring=KeyRing(key_dir=Path(key_dir)) if key_dir else None)
    except Exception as e:  # noqa: BLE001 - bad URL or unusable store
        raise UsageError(f"--store: {e}") from None
    update, stop = progress_reporter("reading the store")
    try:
        inv = inventory.read_inventory(store, progress=update)
    finally:
        stop()
        store.close()
    for p in inv.problems:
        print(f"warning: {p}", file=sys.stderr)

    async def go(c: Any) -> int:
        known = {v["name"]: v for v in await c.volume_list()}
        roots = {r["root"] for r in await c.removal_list()}
        counts: dict[str, int] = {}
        for v in inv.volumes:
            snaps = {s.name: {"position": list(s.position), "created": s.created} for s in v.snapshots}
            if args.dry_run:
                status = _dry_status(known.get(v.name), v.options, snaps)
            else:
                res = await c.volume_recover(v.name, v.options, v.created, snaps)
                status = res["status"]
                if res.get("message"):
                    print(f"  {v.name}: {res['message']}", file=sys.stderr)
            counts[status] = counts.get(status, 0) + 1
            if status != "unchanged":
                extra = f" (clone of {v.options['from']})" if v.options.get("from") else ""
                print(f"{'would be ' if args.dry_run else ''}{status}: volume {v.name}{extra} "
                      f"options={v.options} snapshots={sorted(snaps)}")
        for r in inv.removals:
            if args.dry_run:
                status = "unchanged" if r.root in roots else "recovered"
            else:
                status = (await c.removal_recover(r.name, r.root))["status"]
            if status != "unchanged":
                print(f"{'would be ' if args.dry_run else ''}{status}: deletion of {r.root} (volume {r.name})")
            counts[f"removal {status}"] = counts.get(f"removal {status}", 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing in the store"
        print(f"{'dry run, nothing changed: ' if args.dry_run else ''}{summary}")
        return 1 if counts.get("conflict") else 0
    return run_client(args, go)


def _dry_status(known: dict[str, Any] | None, options: dict[str, str], snaps: dict[str, Any]) -> str:
    """What `volume.recover` would answer (control/recover.py's rules, on the listed volume)."""
    from control.recover import format_of
    if known is None:
        return "recovered"
    if known.get("state") == "removing" or format_of(known.get("options") or {}) != format_of(options):
        return "conflict"
    return "updated" if set(snaps) - set(known.get("snapshots") or {}) else "unchanged"


def register(cs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `backup`, `restore` and `recover` to `ferry control`'s subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    b = cs.add_parser("backup", help="write the control state (volumes, hosts, leases, jobs) to a file",
                      description="Copy every persistent record of the control state to a file. Works while "
                                  "the control service runs (SQLite: a read-only snapshot).",
                      epilog=EXAMPLES, formatter_class=raw)
    add_state_args(b)
    b.add_argument("-o", "--output", required=True, metavar="FILE", help="the backup file ('-': standard output)")
    b.set_defaults(fn=cmd_backup)
    r = cs.add_parser("restore", help="write a control backup into an empty state store (SQLite or etcd)",
                      description="Restore a `ferry control backup` into an empty state store; backup from one "
                                  "backend and restore into the other to move between them. Stop the control "
                                  "service first (SQLite refuses a second user anyway).",
                      epilog=EXAMPLES, formatter_class=raw)
    add_state_args(r)
    r.add_argument("file", metavar="FILE", help="the backup ('-': standard input)")
    r.add_argument("--force", action="store_true", help="write over a state store that is not empty")
    r.set_defaults(fn=cmd_restore)
    rc = cs.add_parser("recover", help="rebuild the control state from the object store",
                       description="Read every volume, snapshot, clone link and unfinished deletion from the "
                                   "store and record at the control service what it does not know. Never "
                                   "replaces or removes a record; running it again changes nothing. Labels are "
                                   "not in the store and come back empty.",
                       epilog=EXAMPLES, formatter_class=raw)
    rc.add_argument("--store", metavar="URL", help="the store the agents use (default $FERRY_STORE)")
    rc.add_argument("--key-dir", metavar="DIR",
                    help="the agents' key directory: without it, encrypted volumes whose snapshots, pins or "
                         "image size must be read are left out with a note (default $FERRY_KEY_DIR)")
    rc.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    client_args(rc)
    rc.set_defaults(fn=cmd_recover)
