"""Agent defaults that the command line shows in its help, kept where
importing them costs nothing (the CLI builds its parser without loading
the agent)."""

# How long a Mount waits for a volume in use on another (live) host to be
# released before it fails. Swarm mounts a moved task's volume before the old
# task has stopped (a drain, an update); with the planned-move wait this stays
# well within Docker's 120 s per Mount.
DEFAULT_IN_USE_WAIT = 30.0
# The most it may be: with the planned-move wait (60 s) and a mount, a
# Mount must still answer within Docker's 120 s.
MAX_IN_USE_WAIT = 50.0
