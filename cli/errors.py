"""Exceptions every `ferry` subcommand may raise; `cli.main.main` maps them to exit codes.

Shared by every area's commands (fs, control, state, backup, agent) so that all
of them fail the same way: a message on stderr, exit 2 for usage errors, 1 for failures.
"""


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class Failure(Exception):
    """A failure the message explains (what went wrong, what to do): exit code 1."""
