"""`ferry control|volume|hosts|status|snapshot` subcommands (issue 3; filled in as they land)."""
from __future__ import annotations

import argparse


def add_commands(sub: "argparse._SubParsersAction") -> None:
    """Register the control-side subcommands on the top-level `ferry` parser."""
