"""The `ferry` entry point: one parser, each area's commands added by its own
module (`register(sub)`), one mapping of errors to exit codes.

Exit codes: 0 success, 1 a failure explained on stderr, 2 usage errors,
130 interrupted.

Why the areas are listed here rather than found by some registry: the list
is the table of contents of the command line, and importing a module never
changes what `ferry` does.
"""
from __future__ import annotations

import argparse
import sys

from cli import agent, control, fs
from cli.common import Parser, setup_logging
from cli.errors import Failure, UsageError

AREAS = (fs, control, agent)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="ferry", description="ferry: portable container volumes on S3-compatible storage.",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    for area in AREAS:
        area.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    from fsd.format.crypto import KeyError_
    from fsd.format.framing import CorruptObject
    from fsd.store.base import StoreError
    from fsd.volume.objects import VolumeError
    if not (args.cmd == "fs" and args.fscmd == "mount" and args.foreground):
        setup_logging(args.verbose)
    try:
        return int(args.fn(args))
    except UsageError as e:
        print(f"ferry: {e}", file=sys.stderr)
        return 2
    except (StoreError, VolumeError, CorruptObject, KeyError_, Failure) as e:
        print(f"ferry: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
