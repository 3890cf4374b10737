"""Offline tools over a volume on the store: `fsck` checks it, `inspect`
reports on it, `inventory` reads a whole bucket to rebuild the control
service's map (ferry control recover).

May import: every fsd layer.
"""
__all__ = ["fsck", "inspect", "inventory"]
