"""`ferry` command line: one entry point, subcommands, --help everywhere.

Exit codes: 0 success, 1 a failure explained on stderr, 2 usage errors.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

EXAMPLES_FS = """\
examples:
  mkdir -p /srv/ferry-store
  ferry fs mkfs  --store file:///srv/ferry-store myvol
  ferry fs mount --store file:///srv/ferry-store --cache-dir /var/cache/ferry/myvol myvol /mnt/myvol
  ferry fs umount /mnt/myvol
  ferry fs fsck  --store file:///srv/ferry-store myvol

store URLs:
  file:///ABSOLUTE/PATH                       a local directory laid out as an object store
  s3://BUCKET[/PREFIX]?endpoint=URL&region=R  S3-compatible storage; credentials from the
                                              standard AWS chain (AWS_ACCESS_KEY_ID, ~/.aws, ...)
"""


from fsd.clierrors import Failure, UsageError  # noqa: E402  (shared with control/agent CLIs)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with a clear message (argparse's default too, kept explicit)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def setup_logging(verbose: bool, volume: str | None = None) -> None:
    host = socket.gethostname()
    fmt = f"%(asctime)s ferry[%(process)d] host={host}" + (f" volume={volume}" if volume else "") + \
          " %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---------------------------------------------------------------------- fs mkfs
def cmd_mkfs(args) -> int:
    from fsd import volume
    from fsd.options import parse_kv
    from fsd.store import open_store
    from fsd.format import keys
    try:
        keys.validate_volume_name(args.volume)
        opts = parse_kv(args.option or [])
    except ValueError as e:
        raise UsageError(str(e)) from None
    store = open_store(args.store)
    try:
        sb = volume.mkfs(store, args.volume, opts, allow_unfenced=args.allow_unfenced_store)
    finally:
        store.close()
    print(f"created volume {args.volume} in {args.store} (block size {sb.block_size}, "
          f"compression {sb.compression}, fencing {sb.fencing})")
    return 0


# --------------------------------------------------------------------- fs mount
def _mount_config(args):
    from fsd.mount import MountConfig
    from fsd.options import parse_kv, parse_mount_options
    from fsd.format import keys
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
                       allow_unfenced=args.allow_unfenced_store)


def cmd_mount(args) -> int:
    cfg = _mount_config(args)
    if args.foreground:
        import trio
        from fsd.mount import serve
        setup_logging(args.verbose, cfg.volume)
        return trio.run(serve, cfg)
    # Background: run ourselves in the foreground in a new session, wait until mounted.
    from fsd.daemon import spawn_mount
    started = spawn_mount(list(args.argv), cfg.cache_dir, cfg.mountpoint)
    if started.ok:
        print(f"mounted {cfg.volume} on {cfg.mountpoint} (daemon pid {started.pid}, log {cfg.cache_dir / 'fsd.log'})")
        return 0
    print(started.message, file=sys.stderr)
    print("ferry: mount failed", file=sys.stderr)
    return 1


# -------------------------------------------------------------------- fs umount
def cmd_umount(args) -> int:
    from fsd.daemon import unmount_and_wait
    from fsd.mount import registry_path
    mp = Path(os.path.abspath(args.mountpoint))
    reg = registry_path(mp)
    info = json.loads(reg.read_text()) if reg.exists() else None
    started = time.monotonic()
    shown = [False]

    def progress(st: dict | None) -> None:
        if time.monotonic() - started <= 1.0:
            return
        if st is not None:
            left = st.get("dirty_bytes", 0) + st.get("inflight_bytes", 0)
            msg = f"\rcommitting {info['volume']}: {left / 1e6:.1f} MB left to upload, phase {st.get('phase')}   "
        else:
            msg = f"\rcommitting {info['volume']}...   "
        if sys.stderr.isatty() or not shown[0]:
            print(msg, end="", file=sys.stderr, flush=True)
            shown[0] = True

    result = unmount_and_wait(mp, info, progress=progress)
    if shown[0]:
        print(file=sys.stderr)
    if result.ok:
        print(result.message)
        return 0
    print(f"ferry: {result.message}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------- fs fsck
def cmd_fsck(args) -> int:
    from fsd.fsck import fsck
    from fsd.store import open_store
    store = open_store(args.store)
    try:
        report = fsck(store, args.volume, verify_data=args.verify_data)
    finally:
        store.close()
    for line in report.info:
        print(line)
    if report.problems:
        print(f"{len(report.problems)} problem(s):")
        for p in report.problems:
            print(f"  - {p}")
        return 1
    print("clean")
    return 0


# ------------------------------------------------------------------- fs inspect
def cmd_inspect(args) -> int:
    from fsd.inspect import inspect_volume
    from fsd.store import open_store
    store = open_store(args.store)
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


# ------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ferry", description="ferry: portable container volumes on S3-compatible storage.",
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    fs = sub.add_parser("fs", help="standalone filesystem commands (no control service)",
                        description="Create, mount, check and inspect a volume directly on a store.",
                        epilog=EXAMPLES_FS, formatter_class=argparse.RawDescriptionHelpFormatter)
    fss = fs.add_subparsers(dest="fscmd", required=True, parser_class=_Parser)

    def store_arg(sp):
        sp.add_argument("--store", required=True, metavar="URL", help="file:///PATH or s3://BUCKET[/PREFIX]?endpoint=URL&region=R")
        sp.add_argument("volume", metavar="VOLUME", help="volume name (1-128 of letters, digits, . _ -)")

    m = fss.add_parser("mkfs", help="create a volume", description="Create a new volume on the store.",
                       epilog="options (-o): block_size=1M (64k..16M), compression=none|zstd",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    store_arg(m)
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

    f = fss.add_parser("fsck", help="check a volume's consistency (read-only)")
    store_arg(f)
    f.add_argument("--verify-data", action="store_true", help="download every block and check its checksum")
    f.set_defaults(fn=cmd_fsck)

    i = fss.add_parser("inspect", help="show format, epochs, seal, journal position and live upload lag")
    store_arg(i)
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.set_defaults(fn=cmd_inspect)

    # Cluster commands live with their packages; each adds its own subcommands.
    from control.cli import add_commands as add_control_commands
    from agent.cli import add_commands as add_agent_commands
    add_control_commands(sub)
    add_agent_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    from fsd.store.base import StoreError
    from fsd.volume import VolumeError
    from fsd.format.framing import CorruptObject
    if not (args.cmd == "fs" and args.fscmd == "mount" and args.foreground):
        setup_logging(args.verbose)
    try:
        return args.fn(args)
    except UsageError as e:
        print(f"ferry: {e}", file=sys.stderr)
        return 2
    except (StoreError, VolumeError, CorruptObject, Failure) as e:
        print(f"ferry: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
