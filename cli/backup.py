"""`ferry volume export` and `ferry volume import`: backup and restore of a
cluster's volumes, from any machine that can reach the store and the
control service (docs/backup.md).

Why the CLI reaches the store itself: a tar can be large, and streaming it
through an agent and the control service would copy it twice more. The
control service still decides what is consistent: exporting a volume as
it is now asks it for a snapshot, which the volume's live holder makes
after committing what was written (so the tar holds everything written
before the command), and an import is recorded there only once the volume
is complete in the store.
"""
from __future__ import annotations

import argparse
import sys
import time

from cli.common import ENV_STORE, byte_progress, client_args, kv_list, open_input, open_output, run_client, store_url
from cli.errors import Failure, UsageError


def cmd_volume_export(args: argparse.Namespace) -> int:
    from fsd.backup import tarexport
    from fsd.backup.clones import parse_source
    from fsd.store import open_store
    url = store_url(args)
    try:
        src = parse_source(args.source, time.time_ns())
    except ValueError as e:
        raise UsageError(str(e)) from None

    async def go(c) -> int:
        import trio
        spec, temp = args.source, None
        if src.snap is None and src.at_ns is None:
            # As it is now: a snapshot made by the volume's live holder, after it commits.
            temp = tarexport.temp_snapshot_name(time.time_ns())
            await c.snapshot_create(src.volume, temp)
            spec = f"{src.volume}@{temp}"
        out, close = open_output(args.output)
        update, stop = byte_progress(f"exporting {args.source}")
        t0 = time.monotonic()

        def run() -> tarexport.ExportStats:
            store = open_store(url)
            try:
                return tarexport.export_volume(store, spec, out, progress=update)
            finally:
                store.close()
        try:
            stats = await trio.to_thread.run_sync(run)
            out.flush()
        except tarexport.ExportError as e:
            raise Failure(str(e)) from None
        finally:
            stop()
            if close:
                out.close()
            if temp is not None:
                await c.snapshot_rm(src.volume, temp)
        dt = time.monotonic() - t0
        print(f"exported {args.source}: {stats.entries} entries, {stats.bytes / 1e6:.1f} MB of data in {dt:.1f}s "
              f"({stats.bytes / 1e6 / max(dt, 1e-9):.0f} MB/s)", file=sys.stderr)
        return 0
    return run_client(args, go)


def cmd_volume_import(args: argparse.Namespace) -> int:
    from control.client import ControlError
    from control.validate import validate_volume_name, validate_volume_options
    from fsd.backup import tarimport
    from fsd.lifecycle import removal
    from fsd.store import open_store
    url = store_url(args)
    options = kv_list(args.option, "-o")
    try:
        validate_volume_name(args.name)
        validate_volume_options(args.name, options)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if "from" in options:
        raise UsageError("an imported volume takes its content from the tar; drop -o from=")

    async def go(c) -> int:
        import trio
        try:
            await c.volume_get(args.name)
            raise Failure(f"volume {args.name!r} already exists; import into a new name")
        except ControlError as e:
            if e.code != "not_found":
                raise
        src, total, close = open_input(args.file)
        update, stop = byte_progress(f"importing {args.name}")
        from fsd.format.superblock import KNOWN_OPTIONS
        mkfs_opts = {k: v for k, v in options.items() if k in KNOWN_OPTIONS}

        def run() -> tarimport.ImportStats:
            store = open_store(url)
            try:
                return tarimport.import_tar(store, args.name, src, mkfs_opts, strip=args.strip_components,
                                            progress=update, total=total)[1]
            finally:
                store.close()
        t0 = time.monotonic()
        try:
            stats = await trio.to_thread.run_sync(run)
        finally:
            stop()
            if close:
                src.close()
        try:
            await c.volume_create(args.name, options, {})
        except BaseException:
            def undo() -> None:
                store = open_store(url)
                try:
                    removal.delete_volume(store, removal.begin_removal(store, args.name))
                finally:
                    store.close()
            await trio.to_thread.run_sync(undo)
            raise
        dt = time.monotonic() - t0
        print(f"imported volume {args.name}: {stats.files} files, {stats.bytes / 1e6:.1f} MB in {dt:.1f}s "
              f"({stats.bytes / 1e6 / max(dt, 1e-9):.0f} MB/s); Docker can use it now (docker run -v "
              f"{args.name}:/data ...)")
        return 0
    return run_client(args, go)


def register(vs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `export` and `import` to `ferry volume`'s subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    ex = vs.add_parser("export", help="write a volume (or a snapshot, or a past moment) as a tar",
                       description="Stream a POSIX (pax) tar of a volume straight from the store, on any "
                                   "machine that reaches the store, while the volume is in use anywhere. "
                                   "VOLUME alone: everything written to it before the command (its host "
                                   "commits first); VOLUME@SNAP: a snapshot; VOLUME@TIME: a moment of its "
                                   "history window.", formatter_class=raw,
                       epilog="examples:\n"
                              "  ferry volume export pgdata -o pgdata.tar\n"
                              "  ferry volume export pgdata@nightly | zstd > pgdata.tar.zst\n"
                              "  ferry volume export pgdata@-15m -o before-the-mistake.tar")
    ex.add_argument("source", metavar="VOLUME[@SNAP|@TIME]")
    ex.add_argument("-o", "--output", metavar="FILE", help="where to write the tar ('-' or omitted: stdout)")
    ex.add_argument("--store", metavar="URL", help=f"the object store (default ${ENV_STORE})")
    client_args(ex)
    ex.set_defaults(fn=cmd_volume_export)
    im = vs.add_parser("import", help="create a volume from a tar (GNU, pax, busybox; gzip/xz ok)",
                       description="Create a new volume from a tar, uploading its data straight to the "
                                   "store, then record it at the control service. All or nothing.",
                       formatter_class=raw,
                       epilog="examples:\n"
                              "  ferry volume import pgdata2 pgdata.tar\n"
                              "  # Docker's backup recipe (tar cvf /backup/backup.tar /data) stores data/...:\n"
                              "  ferry volume import db2 backup.tar --strip-components 1")
    im.add_argument("name", metavar="NEW")
    im.add_argument("file", metavar="FILE", nargs="?", help="the tar ('-' or omitted: stdin)")
    im.add_argument("-o", "--option", action="append", metavar="K=V", help="volume option (repeatable)")
    im.add_argument("--strip-components", type=int, default=0, metavar="N",
                    help="drop the first N path components of every member (as tar does)")
    im.add_argument("--store", metavar="URL", help=f"the object store (default ${ENV_STORE})")
    client_args(im)
    im.set_defaults(fn=cmd_volume_import)
