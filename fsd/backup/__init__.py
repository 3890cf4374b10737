"""What a volume's immutable history makes possible: snapshots, clones,
point-in-time restore (`history`) and tar export and import.

`exportread` (reading a state's blocks) and `blockexport` (a block volume's
files, read through its image) are private to this package.

May import: the ground, `fsd.volume` and `fsd.block`.
"""
__all__ = ["clones", "history", "snapshots", "tarexport", "tarimport"]
