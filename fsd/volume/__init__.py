"""A volume's objects on the store, the layer every other fsd layer stands on.

`objects` finds a volume (incarnations, superblock), claims and seals
epochs, lists and reads the journal and loads its state; `fencing` holds
the pure fencing state a mounted volume checks before it acknowledges;
`creating` writes a new volume's first objects; `retention` holds the pure
rules for what a volume still needs (what GC may delete, the history
window, pins); `scrub` re-reads the live data objects at a bounded rate and
verifies their checksums; `rekey` wraps an encrypted volume's data key with a new key.

May import: the ground (format, store, meta, fsd's shared modules).
"""
__all__ = ["creating", "fencing", "objects", "rekey", "retention", "scrub"]
