"""Exceptions every `ferry` subcommand may raise; `cli.main.main` maps them to exit codes.

Shared by the fsd, control and agent command lines so that all of them fail
the same way: a message on stderr, exit 2 for usage errors, 1 for failures.
"""


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class Failure(Exception):
    """A failure the message explains (what went wrong, what to do): exit code 1."""
