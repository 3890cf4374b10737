"""The pure metadata core: journal records (`records`), the in-memory state
they build (`state`), POSIX namespace operations that emit them (`ops`) and
fsck invariants (`check`). No I/O and no clocks here: callers pass `now_ns`,
so all of it is unit-tested in milliseconds and replay is deterministic."""
