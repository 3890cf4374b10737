"""ferry's filesystem daemon (fsd): a fenced, crash-safe POSIX volume on object storage.

Layering (see docs/architecture.md):
  store/   object stores behind one narrow synchronous interface, plus a trio wrapper
  format/  the versioned on-storage format (pure codecs and key layout)
  meta/    the pure metadata core: journal records, state, POSIX operations
  cache/   write-back cache policy (pure) and the on-disk block cache (adapter)
  fuse_ops, engine, mount, cli: the adapters that wire the pure parts to FUSE, S3 and disk
"""
