"""`ferry fs ...`: the standalone filesystem commands, a volume straight on a
store with no control service (mkfs, mount, umount, resize, fsck, inspect,
rm, gc, snapshot, history, export, import)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from cli.common import Parser, byte_progress, open_input, open_output, progress_reporter, setup_logging
from cli.errors import Failure, UsageError

EXAMPLES_FS = """\
examples:
  ferry fs mkfs  --store file:///srv/ferry-store myvol     # creates /srv/ferry-store if missing
  ferry fs mount --store file:///srv/ferry-store --cache-dir /var/cache/ferry/myvol myvol /mnt/myvol
  ferry fs umount /mnt/myvol
  ferry fs fsck  --store file:///srv/ferry-store myvol
  ferry fs gc    --store file:///srv/ferry-store myvol --dry-run
  ferry fs rm    --store file:///srv/ferry-store myvol

store URLs:
  file:///ABSOLUTE/PATH                       a local directory laid out as an object store
  s3://BUCKET[/PREFIX]?endpoint=URL&region=R  S3-compatible storage; credentials from the
                                              standard AWS chain (AWS_ACCESS_KEY_ID, ~/.aws, ...)
"""


def key_ring(args):
    """The keys given with --key-file or --key-dir, else $FERRY_KEY_FILE or $FERRY_KEY_DIR, or None."""
    from fsd.store import KeyRing
    key_file = getattr(args, "key_file", None)
    key_dir = getattr(args, "key_dir", None)
    if not key_file and not key_dir:
        key_file, key_dir = os.environ.get("FERRY_KEY_FILE"), os.environ.get("FERRY_KEY_DIR")
    if key_file:
        return KeyRing(key_file=Path(key_file).absolute())
    if key_dir:
        return KeyRing(key_dir=Path(key_dir).absolute())
    return None


def open_volume_store(args, create: bool = False):
    """The store of --store, able to open encrypted volumes with the keys given."""
    from fsd.store import open_store
    return open_store(args.store, create=create, ring=key_ring(args))


# ---------------------------------------------------------------------- fs mkfs
def cmd_mkfs(args) -> int:
    from fsd.format import keys
    from fsd.options import parse_kv
    from fsd.volume import objects as volume
    try:
        keys.validate_volume_name(args.volume)
        opts = parse_kv(args.option or [])
    except ValueError as e:
        raise UsageError(str(e)) from None
    store = open_volume_store(args, create=True)
    try:
        if args.source:
            from fsd.backup import clones
            t0 = time.monotonic()
            _ref, sb, src = clones.create(store, args.volume, args.source, opts)
            print(f"created volume {args.volume} in {args.store} as a clone of {src.describe()} "
                  f"(at segment {sb.origins[0].position}, {time.monotonic() - t0:.2f}s; it shares the "
                  f"origin's data, writes to either never show in the other)")
            return 0
        _ref, sb = volume.mkfs(store, args.volume, opts, allow_unfenced=args.allow_unfenced_store)
    finally:
        store.close()
    layout = (f"layout block: {sb.block_fs} on a {sb.image_size / (1 << 30):g} GiB sparse image, made at first mount; "
              if sb.layout == "block" else "")
    print(f"created volume {args.volume} in {args.store} ({layout}block size {sb.block_size}, "
          f"compression {sb.compression}, fencing {sb.fencing})")
    return 0


# --------------------------------------------------------------------- fs mount
def _mount_config(args):
    from fsd.format import keys
    from fsd.lifecycle.mount import MountConfig
    from fsd.options import parse_kv, parse_mount_options
    try:
        keys.validate_volume_name(args.volume)
        opts = parse_mount_options(parse_kv(args.option or []))
    except ValueError as e:
        raise UsageError(str(e)) from None
    mp = Path(args.mountpoint)
    if not mp.is_dir():
        raise UsageError(f"mountpoint {mp} is not a directory (create it with mkdir -p {mp})")
    if os.path.ismount(mp):
        raise UsageError(f"{mp} is already a mount point")
    return MountConfig(store_url=args.store, volume=args.volume, cache_dir=Path(args.cache_dir).resolve(),
                       mountpoint=mp.resolve(), options=opts, takeover=args.takeover,
                       allow_unfenced=args.allow_unfenced_store, ring=key_ring(args))


def cmd_mount(args) -> int:
    cfg = _mount_config(args)
    if args.foreground:
        import trio

        from fsd.lifecycle.mount import serve
        setup_logging(args.verbose, cfg.volume)
        return trio.run(serve, cfg)
    # Background: run ourselves in the foreground in a new session, wait until mounted.
    from fsd.lifecycle.daemon import spawn_mount
    started = spawn_mount(list(args.argv), cfg.cache_dir, cfg.mountpoint)
    if started.ok:
        print(f"mounted {cfg.volume} on {cfg.mountpoint} (daemon pid {started.pid}, log {cfg.cache_dir / 'fsd.log'})")
        return 0
    print(started.message, file=sys.stderr)
    print("ferry: mount failed", file=sys.stderr)
    return 1


# -------------------------------------------------------------------- fs umount
UMOUNT_LOG_EVERY = 10.0
def cmd_umount(args) -> int:
    from fsd.lifecycle.daemon import unmount_and_wait
    from fsd.rundir import registry_path
    mp = Path(os.path.abspath(args.mountpoint))
    reg = registry_path(mp)
    info = json.loads(reg.read_text()) if reg.exists() else None
    name = info["volume"] if info else str(mp)
    started = time.monotonic()
    tty = sys.stderr.isatty()
    shown = [False]
    last_line = [started - UMOUNT_LOG_EVERY]

    def progress(st: dict | None) -> None:
        """A line rewritten in place on a terminal; elsewhere (a service's journal, a
        pipe) a full line at most every UMOUNT_LOG_EVERY seconds."""
        now = time.monotonic()
        if now - started <= 1.0 or (not tty and now - last_line[0] < UMOUNT_LOG_EVERY):
            return
        if st is not None:
            left = st.get("dirty_bytes", 0) + st.get("inflight_bytes", 0)
            msg = f"committing {name}: {left / 1e6:.1f} MB left to upload, phase {st.get('phase')}"
        else:
            msg = f"committing {name}..."
        if tty:
            print(f"\r{msg}   ", end="", file=sys.stderr, flush=True)
        else:
            print(f"{msg} ({now - started:.0f} s)", file=sys.stderr, flush=True)
            last_line[0] = now
        shown[0] = True

    result = unmount_and_wait(mp, info, progress=progress)
    if shown[0] and tty:
        print(file=sys.stderr)
    if result.ok:
        print(result.message)
        return 0
    print(f"ferry: {result.message}", file=sys.stderr)
    return 1


def cmd_resize(args) -> int:
    from fsd.block.stack import BlockStackError, grow
    from fsd.options import parse_size
    from fsd.rundir import registry_path
    mp = Path(os.path.abspath(args.mountpoint))
    reg = registry_path(mp)
    info = json.loads(reg.read_text()) if reg.exists() else None
    if info is None:
        print(f"ferry: nothing is mounted on {mp} by ferry on this host; mount the volume, then resize it",
              file=sys.stderr)
        return 1
    if info.get("layout") != "block":
        print(f"ferry: {info['volume']} is a layout=files volume: it has no fixed size to grow (its df size "
              "is the mount option -o size=, set at mount)", file=sys.stderr)
        return 1
    try:
        size = parse_size(args.size)
    except ValueError as e:
        print(f"ferry: {e}", file=sys.stderr)
        return 2
    try:
        old, new, now = grow(Path(info["fuse_mountpoint"]), mp, size, info["volume"])
    except BlockStackError as e:
        print(f"ferry: {e}", file=sys.stderr)
        return 1
    grown = f"{info['volume']}: image {old / (1 << 30):.2f} GiB -> {new / (1 << 30):.2f} GiB"
    if now:
        print(f"{grown}; the filesystem on {mp} now uses it")
    else:
        print(f"{grown}; ext4 takes the new size at the next mount (growing it while mounted needs "
              "CAP_SYS_RESOURCE, which this process lacks)")
    return 0


# ---------------------------------------------------------------------- fs fsck
def cmd_fsck(args) -> int:
    from fsd.tools.fsck import fsck
    store = open_volume_store(args)
    update, stop = progress_reporter(f"{'verifying' if args.verify_data else 'checking'} {args.volume}", "blocks")
    try:
        report = fsck(store, args.volume, verify_data=args.verify_data, progress=update)
    finally:
        stop()
        store.close()
    for line in report.info:
        print(line)
    if report.problems:
        print(f"{report.verdict()}:")
        for p in report.problems:
            print(f"  - {p}")
        return 1
    print(report.verdict())
    return 0


# ------------------------------------------------------------------- fs inspect
def cmd_inspect(args) -> int:
    from fsd.tools.inspect import inspect_volume
    store = open_volume_store(args)
    try:
        info = inspect_volume(store, args.volume)
    finally:
        store.close()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:22} {v}")
    return 0


# ------------------------------------------------------------------------ fs rm


def cmd_rm(args) -> int:
    from fsd.format import keys
    from fsd.lifecycle import removal
    from fsd.volume.objects import VolumeError
    try:
        keys.validate_volume_name(args.volume)
    except ValueError as e:
        raise UsageError(str(e)) from None
    store = open_volume_store(args)
    try:
        refs = removal.pending_removals(store, args.volume)     # interrupted removals to finish
        refused: Exception | None = None
        try:
            ref = removal.begin_removal(store, args.volume, force=args.force)
            if ref not in refs:
                refs.append(ref)
        except VolumeError as e:
            if not refs or "does not exist" not in str(e):
                refused = e
        for ref in refs:
            update, stop = progress_reporter(f"removing {ref.name} ({ref.root})")
            try:
                res = removal.delete_volume(store, ref, progress=update)
            finally:
                stop()
            print(f"removed volume {ref.name} (root {ref.root}): {res.deleted} objects, "
                  f"{res.bytes / 1e6:.1f} MB freed")
            if res.held_by:
                print(f"  kept {res.kept_objects} objects that {len(res.held_by)} clone(s) of it share "
                      f"({', '.join(res.held_by)}): they go when the last of those clones is removed")
            if res.kept:
                print(f"  kept {len(res.kept)} seal(s) of an owner that never released the volume: they keep "
                      f"that owner fenced if it is still running somewhere (a few hundred bytes)")
    finally:
        store.close()
    if refused is not None:
        raise refused
    return 0


# ------------------------------------------------------------------------ fs gc
def cmd_gc(args) -> int:
    from fsd.gc.run import collect
    from fsd.options import parse_duration
    try:
        grace = parse_duration(args.grace)
    except ValueError as e:
        raise UsageError(f"--grace: {e}") from None
    store = open_volume_store(args)
    try:
        update, stop = progress_reporter(f"collecting {args.volume}")
        try:
            report, plan = collect(store, args.volume, dry_run=args.dry_run, grace_s=grace, progress=update)
        finally:
            stop()
    finally:
        store.close()
    if args.json:
        print(json.dumps({**report.__dict__, "base": list(report.base)}, indent=2))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    if args.dry_run and args.verbose:
        for d in plan.delete:
            print(f"  {d.kind:8} {d.size:>12} {d.key}")
    kinds = ", ".join(f"{v['objects']} {k} object(s) ({v['bytes'] / 1e6:.1f} MB)"
                      for k, v in sorted(report.deleted.items())) or "nothing"
    print(f"volume {args.volume}: {verb} {kinds}; {report.freed_bytes / 1e6:.1f} MB freed")
    print(f"  live data: {report.live_objects} object(s), {report.live_bytes / 1e6:.1f} MB; base snapshot "
          f"at {report.base[0]}/{report.base[1]}" + (f" ({report.compacted} segments folded into it)"
                                                      if report.compacted else ""))
    if report.kept_young or report.kept_unsealed:
        print(f"  kept for now: {report.kept_young} unreferenced object(s) younger than the grace period, "
              f"{report.kept_unsealed} of an epoch that may still commit (its owner collects them)")
    return 0


def cmd_snapshot(args) -> int:
    from fsd.backup import snapshots
    from fsd.format import keys
    try:
        keys.validate_volume_name(args.volume)
        if args.snapcmd != "ls":
            keys.validate_snapshot_name(args.snap)
    except ValueError as e:
        raise UsageError(str(e)) from None
    store = open_volume_store(args)
    try:
        if args.snapcmd == "create":
            t0 = time.monotonic()
            mp = snapshots.flush_local_mount(args.store, args.volume)
            info = snapshots.create(store, args.volume, args.snap)
            print(f"snapshot {args.volume}@{info.name} created at journal position {info.position[0]}/"
                  f"{info.position[1]} in {time.monotonic() - t0:.2f}s"
                  + (f" (committed the mount on {mp} first)" if mp else ""))
        elif args.snapcmd == "ls":
            infos = snapshots.list_all(store, args.volume)
            if args.json:
                print(json.dumps([{**i.__dict__, "position": list(i.position)} for i in infos], indent=2))
            elif not infos:
                print(f"volume {args.volume} has no snapshots")
            for i in infos if not args.json else []:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(i.created_ns / 1e9))
                print(f"{i.name:32} {when}  {i.state:9}  at {i.position[0]}/{i.position[1]}")
        else:
            snapshots.remove(store, args.volume, args.snap)
            print(f"snapshot {args.volume}@{args.snap} removed; the next GC frees what only it kept")
    except snapshots.SnapshotError as e:
        raise Failure(str(e)) from None
    finally:
        store.close()
    return 0


# ----------------------------------------------------------------- fs history
def cmd_history(args) -> int:
    from fsd.backup import history
    from fsd.volume import objects as volume
    store = open_volume_store(args)
    try:
        ref, sb = volume.locate(store, args.volume)
        commits = history.commits(store, ref.root)
    finally:
        store.close()
    shown = commits[-args.limit:] if args.limit else commits
    if args.json:
        print(json.dumps({"volume": args.volume, "history_s": sb.history_s, "commits": len(commits),
                          "shown": [{"position": list(c.position), "at": history.format_ns(c.created_ns),
                                     "at_ns": c.created_ns} for c in shown]}, indent=2))
        return 0
    window = f"{sb.history_s:g}s" if sb.history_s else "none (snapshots only)"
    print(f"volume {args.volume}: history window {window}; {len(commits)} commit(s) can be restored")
    if commits:
        print(f"  oldest: {history.format_ns(commits[0].created_ns)}   newest: "
              f"{history.format_ns(commits[-1].created_ns)}")
        print(f"  clone one: ferry fs mkfs --store {args.store} NEW --from {args.volume}@<moment>")
    if len(shown) < len(commits):
        print(f"  (the last {len(shown)}; --limit 0 shows all)")
    for c in shown:
        print(f"  {history.format_ns(c.created_ns)}  at {c.position[0]}/{c.position[1]}")
    return 0


# -------------------------------------------------------------- fs export/import


def cmd_export(args) -> int:
    from fsd.backup import tarexport
    out, close = open_output(args.output)
    store = open_volume_store(args)
    t0 = time.monotonic()
    update, stop = byte_progress(f"exporting {args.source}")
    try:
        stats = tarexport.export_volume(store, args.source, out, progress=update)
        out.flush()
    except tarexport.ExportError as e:
        raise Failure(str(e)) from None
    finally:
        stop()
        store.close()
        if close:
            out.close()
    dt = time.monotonic() - t0
    print(f"exported {args.source}: {stats.entries} entries, {stats.files} files, {stats.bytes / 1e6:.1f} MB of "
          f"data ({stats.holes / 1e6:.1f} MB of holes not written) in {dt:.1f}s "
          f"({stats.bytes / 1e6 / max(dt, 1e-9):.0f} MB/s)"
          + (f"; skipped {stats.skipped_sockets} socket(s)" if stats.skipped_sockets else ""), file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    from fsd.backup import tarimport
    from fsd.options import parse_kv
    try:
        opts = parse_kv(args.option or [])
    except ValueError as e:
        raise UsageError(str(e)) from None
    src, total, close = open_input(args.file)
    store = open_volume_store(args, create=True)
    t0 = time.monotonic()
    update, stop = byte_progress(f"importing {args.volume}")
    try:
        _ref, stats = tarimport.import_tar(store, args.volume, src, opts, strip=args.strip_components,
                                           progress=update, total=total)
    finally:
        stop()
        store.close()
        if close:
            src.close()
    dt = time.monotonic() - t0
    print(f"imported volume {args.volume}: {stats.entries} entries, {stats.files} files, {stats.bytes / 1e6:.1f} MB "
          f"in {stats.objects} data objects ({stats.holes / 1e6:.1f} MB of holes and zeros not stored) in "
          f"{dt:.1f}s ({stats.bytes / 1e6 / max(dt, 1e-9):.0f} MB/s)")
    for s in stats.skipped[:10]:
        print(f"  skipped {s}")
    return 0


# --------------------------------------------------------------------- fs rekey
def cmd_rekey(args) -> int:
    from fsd.store import KeyRing
    from fsd.volume.rekey import rekey
    if not (args.key_file or args.key_dir):
        raise UsageError("rekey needs the volume's current key: --key-file FILE (or --key-dir DIR)")
    new = KeyRing(key_file=Path(args.new_key_file)).get(args.new_key_name or "new")
    store = open_volume_store(args)
    try:
        info = rekey(store, args.volume, new, args.new_key_name)
    finally:
        store.close()
    print(f"volume {args.volume}: its data key is now wrapped by key {info.key_name!r} (fingerprint "
          f"{info.keys[0].kek}); the old key no longer opens it")
    return 0


# ------------------------------------------------------------------------ main
def register(sub: argparse._SubParsersAction[Parser]) -> None:
    """Add `ferry fs` and its subcommands to the top-level parser's subcommands."""
    fs = sub.add_parser("fs", help="standalone filesystem commands (no control service)",
                        description="Create, mount, check and inspect a volume directly on a store.",
                        epilog=EXAMPLES_FS, formatter_class=argparse.RawDescriptionHelpFormatter)
    fss = fs.add_subparsers(dest="fscmd", required=True, parser_class=Parser)

    def store_arg(sp):
        sp.add_argument("--store", required=True, metavar="URL", help="file:///PATH or s3://BUCKET[/PREFIX]?endpoint=URL&region=R")
        sp.add_argument("volume", metavar="VOLUME", help="volume name (1-128 of letters, digits, . _ -)")
        key_args(sp)

    def key_args(sp):
        k = sp.add_mutually_exclusive_group()
        k.add_argument("--key-file", metavar="FILE",
                       help="key of an encrypted volume (32 bytes: raw, base64 or hex; default $FERRY_KEY_FILE; "
                            "docs/encryption.md)")
        k.add_argument("--key-dir", metavar="DIR",
                       help="directory of keys, one <name>.key per key name (default $FERRY_KEY_DIR)")

    from fsd.format.superblock import KNOWN_OPTIONS as MKFS_OPTIONS
    m = fss.add_parser("mkfs", help="create a volume (empty, or a clone with --from)",
                       description="Create a new volume on the store: empty, or with --from a clone of "
                                   "another volume's snapshot or past moment that shares its data (it costs "
                                   "metadata only, whatever the data size).",
                       epilog="options (-o):\n" + "".join(f"  {k}: {v}\n" for k, v in MKFS_OPTIONS.items())
                              + "\n--from forms:\n"
                              "  VOLUME@SNAP                   a snapshot (ferry fs snapshot ls)\n"
                              "  VOLUME@2026-11-29T10:15:00Z   the last commit at or before that moment\n"
                              "  VOLUME@-15m                   ... 15 minutes ago (s, m, h, d)\n"
                              "  VOLUME                        as last committed\n"
                              "  (ferry fs history lists the moments that can be restored)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(m)
    m.add_argument("--from", dest="source", metavar="VOLUME[@SNAP|@TIME]",
                   help="make a clone of this volume's snapshot or moment")
    m.add_argument("-o", "--option", action="append", metavar="K=V", help="volume option (repeatable)")
    m.add_argument("--allow-unfenced-store", action="store_true",
                   help="accept a store without conditional writes (timing-only fencing: unsafe)")
    m.set_defaults(fn=cmd_mkfs)

    from fsd.options import KNOWN
    mo = fss.add_parser("mount", help="mount a volume",
                        description="Mount a volume. Without --foreground, returns once mounted and "
                                    "leaves the filesystem daemon running in the background.",
                        epilog="options (-o):\n" + "\n".join(f"  {k}: {v}" for k, v in KNOWN.items()),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(mo)
    mo.add_argument("mountpoint", metavar="MOUNTPOINT")
    mo.add_argument("--cache-dir", required=True, metavar="DIR",
                    help="local write-back cache directory (one per mount; reuse it after a crash to recover)")
    mo.add_argument("--takeover", action="store_true",
                    help="take the volume from an owner that did not release it (fences that owner)")
    mo.add_argument("--foreground", action="store_true", help="serve in this process until unmounted")
    mo.add_argument("-o", "--option", action="append", metavar="K=V", help="mount option (repeatable)")
    mo.add_argument("--allow-unfenced-store", action="store_true", help=argparse.SUPPRESS)
    mo.set_defaults(fn=cmd_mount)

    u = fss.add_parser("umount", help="unmount, commit everything and release the volume")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.set_defaults(fn=cmd_umount)

    rs = fss.add_parser("resize", help="grow a mounted layout=block volume (online)",
                        description="Grow a mounted block volume while it is in use: its image (sparse, "
                                    "so only what is written costs storage), the loop device, then ext4 "
                                    "(resize2fs) or XFS (xfs_growfs). The new size is kept in the volume: "
                                    "any later mount, on any host, has it. Volumes only grow.",
                        epilog="example:\n  ferry fs resize /mnt/db 50G",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rs.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the block volume is mounted")
    rs.add_argument("size", metavar="SIZE", help="the new size of the image, e.g. 50G (binary units)")
    rs.set_defaults(fn=cmd_resize)

    f = fss.add_parser("fsck", help="check a volume's consistency (read-only)")
    store_arg(f)
    f.add_argument("--verify-data", action="store_true", help="download every block and check its checksum")
    f.set_defaults(fn=cmd_fsck)

    i = fss.add_parser("inspect", help="show format, epochs, seal, journal position and live upload lag")
    store_arg(i)
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(fn=cmd_inspect)

    r = fss.add_parser("rm", help="remove a volume and delete all its objects from the store",
                       description="Remove a volume: first fence it (a stale owner can commit nothing "
                                   "more, no mount can start), then delete every object it has in the "
                                   "store. Interrupted removals are finished by running it again. A "
                                   "volume created later under the same name is a new, empty volume.",
                       epilog="examples:\n  ferry fs rm --store file:///srv/ferry-store myvol\n"
                              "  ferry fs rm --store s3://bucket?endpoint=http://minio:9000 myvol --force",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(r)
    r.add_argument("--force", action="store_true",
                   help="remove even if the volume is not released (its owner is fenced): only when its "
                        "host is gone for good")
    r.set_defaults(fn=cmd_rm)

    g = fss.add_parser("gc", help="delete what no state of the volume references any more",
                       description="Garbage collection: fold the journal into a new metadata snapshot, "
                                   "then delete the journal segments and snapshots it replaces and the "
                                   "data objects nothing references. Safe while the volume is mounted "
                                   "anywhere: objects its owner may still commit are kept (the owner's "
                                   "own GC collects those).",
                       epilog="examples:\n  ferry fs gc --store file:///srv/ferry-store myvol --dry-run -v\n"
                              "  ferry fs gc --store file:///srv/ferry-store myvol --grace 10m",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(g)
    g.add_argument("--dry-run", action="store_true", help="only print what would be deleted (with -v: every key)")
    g.add_argument("--grace", default="1h", metavar="DURATION",
                   help="never delete an object younger than this (default 1h; e.g. 0, 90s, 10m, 2h)")
    g.add_argument("--json", action="store_true", help="machine-readable report")
    g.set_defaults(fn=cmd_gc)

    sn = fss.add_parser("snapshot", help="create, list and remove snapshots of a volume",
                        description="A snapshot is a named, consistent, read-only state of a volume. It "
                                    "costs metadata only: the data is shared with the volume, and GC keeps "
                                    "what a snapshot references until the snapshot is removed. On a volume "
                                    "mounted on this host, `create` first commits what was written to it.",
                        epilog="examples:\n"
                               "  ferry fs snapshot create --store file:///srv/ferry-store myvol before-upgrade\n"
                               "  ferry fs snapshot ls --store file:///srv/ferry-store myvol\n"
                               "  ferry fs snapshot rm --store file:///srv/ferry-store myvol before-upgrade",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sns = sn.add_subparsers(dest="snapcmd", required=True, parser_class=Parser)
    for verb, text in (("create", "snapshot the volume now"), ("rm", "remove a snapshot")):
        c = sns.add_parser(verb, help=text)
        store_arg(c)
        c.add_argument("snap", metavar="SNAP", help="snapshot name (letters, digits, '._-')")
        c.set_defaults(fn=cmd_snapshot)
    ls = sns.add_parser("ls", help="list the volume's snapshots")
    store_arg(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_snapshot)

    hi = fss.add_parser("history", help="list the moments a volume can be restored to",
                        description="List the commits whose state can be restored (ferry fs mkfs NEW --from "
                                    "VOLUME@TIME, ferry volume create NEW --from VOLUME@TIME): every commit "
                                    "inside the volume's history window (-o history= at creation), plus the "
                                    "state of the oldest snapshot GC kept.",
                        epilog="example:\n  ferry fs history --store file:///srv/ferry-store myvol --limit 5",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(hi)
    hi.add_argument("--limit", type=int, default=20, metavar="N", help="show the last N commits (0: all)")
    hi.add_argument("--json", action="store_true")
    hi.set_defaults(fn=cmd_history)

    ex = fss.add_parser("export", help="write a volume's snapshot or moment as a tar, from the store",
                        description="Stream a POSIX (pax) tar of a volume straight from the store: no mount, "
                                    "on any host, while the volume is in use elsewhere. Nanosecond times, "
                                    "owners, xattrs (SCHILY.xattr), hard links, symlinks, devices, and sparse "
                                    "files without their holes (GNU sparse 1.0). VOLUME alone exports what "
                                    "is committed now; VOLUME@SNAP a snapshot; VOLUME@TIME a moment of the "
                                    "history window (a temporary snapshot pins what is exported). A "
                                    "layout=block volume exports the files inside its image: the image is "
                                    "copied to $TMPDIR (sparse) and mounted there, which needs root and free "
                                    "space for its data.",
                        epilog="examples:\n"
                               "  ferry fs export --store file:///srv/ferry-store myvol@nightly -o myvol.tar\n"
                               "  ferry fs export --store file:///srv/ferry-store myvol@-1h | zstd > myvol.tar.zst\n"
                               "  tar -xpf myvol.tar --xattrs -C /restore        # GNU tar reads it",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ex.add_argument("--store", required=True, metavar="URL", help="file:///PATH or s3://BUCKET[/PREFIX]?endpoint=URL")
    ex.add_argument("source", metavar="VOLUME[@SNAP|@TIME]")
    key_args(ex)
    ex.add_argument("-o", "--output", metavar="FILE", help="where to write the tar ('-' or omitted: stdout)")
    ex.set_defaults(fn=cmd_export)
    rk = fss.add_parser("rekey", help="wrap an encrypted volume's data key with a new key",
                        description="Key rotation: the volume's data key is unwrapped with its current key "
                                    "(--key-file) and wrapped with the new one; the superblock is rewritten, "
                                    "nothing else. The data key itself, and so every object, stays as it is: "
                                    "what rotates is the key that guards it (docs/encryption.md). Clones "
                                    "carry their own copy of the wrapped data key: rekey each of them too.",
                        epilog="example:\n  ferry fs rekey --store file:///srv/ferry-store myvol --key-file old.key "
                               "--new-key-file new.key",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(rk)
    rk.add_argument("--new-key-file", required=True, metavar="FILE", help="the key to wrap the data key with")
    rk.add_argument("--new-key-name", metavar="NAME",
                    help="the new key's name (what an agent's --key-dir holds as NAME.key; default: unchanged)")
    rk.set_defaults(fn=cmd_rekey)

    im = fss.add_parser("import", help="create a volume from a tar, uploading straight to the store",
                        description="Create a new volume from a tar (pax, GNU or ustar; gzip, bzip2 or xz "
                                    "compressed or not): what ferry fs export, GNU tar, bsdtar or busybox tar "
                                    "write. All or nothing: a truncated or corrupt tar creates no volume.",
                        epilog="examples:\n"
                               "  ferry fs import --store file:///srv/ferry-store restored myvol.tar\n"
                               "  # Docker's backup recipe (tar cvf /backup/backup.tar /data) stores data/...:\n"
                               "  ferry fs import --store file:///srv/ferry-store db2 backup.tar --strip-components 1",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(im)
    im.add_argument("file", metavar="FILE", nargs="?", help="the tar ('-' or omitted: stdin)")
    im.add_argument("-o", "--option", action="append", metavar="K=V", help="volume option, as for mkfs")
    im.add_argument("--strip-components", type=int, default=0, metavar="N",
                    help="drop the first N path components of every member (as tar does)")
    im.set_defaults(fn=cmd_import)
