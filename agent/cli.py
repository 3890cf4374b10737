"""`ferry agent` subcommands (issue 3; filled in as they land)."""
from __future__ import annotations

import argparse


def add_commands(sub: "argparse._SubParsersAction") -> None:
    """Register the agent subcommands on the top-level `ferry` parser."""
