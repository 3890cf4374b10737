"""ferry's filesystem daemon (fsd): a fenced, crash-safe POSIX volume on object storage.

Packages in layers, lowest first; a module imports only from its own
package and from lower layers, and from another layered package only the
modules that package's `__all__` names (tests/unit/test_import_graph.py
keeps it so; docs/architecture.md draws the map):

  ground     format/ (on-storage codecs), store/ (object stores), meta/ (the
             pure metadata core) and this folder's small shared modules:
             options, failpoints, tasks, rundir
  volume/    a volume's objects on the store: finding, claiming, fencing,
             creating, what must be retained
  block/     the kernel side of block volumes (loop device, mkfs, mount)
  datapath/  the live data path of a mounted volume: FUSE operations, data,
             cache, the commit, the local journal
  backup/    snapshots, clones, point-in-time history, tar export and import
  gc/        garbage collection over the store, offline and live
  lifecycle/ a volume's life on this host: mount, resume after a crash,
             the daemon process, removal
  tools/     offline tools: fsck, inspect, inventory

The command line is not here: the top-level `cli` package imports fsd,
never the other way round.
"""
