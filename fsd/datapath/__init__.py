"""The live data path of a mounted volume: what runs between a write() and
the store.

`fuse_ops` is the pyfuse3 adapter; `data` the file data and dirty blocks;
`blockio` reads and uploads blocks; `cache/` the local block cache and its
pure policy; `committer` executes the pure `commitplan` (private) against
the store; `localjournal` and `recovery` keep and replay fsync'd data
locally (durability=local); `localdb` persists metadata for a fast remount.

May import: the ground and `fsd.volume`.
"""
__all__ = ["blockio", "cache", "committer", "data", "fuse_ops", "localdb", "localjournal", "recovery"]
