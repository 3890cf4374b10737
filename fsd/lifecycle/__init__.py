"""A volume's life on this host: `mount` assembles and serves a mounted
volume, `daemon` runs one as a background process, `removal` deletes a
volume from the store. `resume` (replaying what a crash left) and
`kernel_tuning` are private to this package.

May import: every fsd layer below it (volume, block, datapath, backup, gc).
"""
__all__ = ["daemon", "mount", "removal"]
