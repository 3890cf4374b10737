"""ferry control service: volumes, hosts, leases and requested moves (docs/cluster.md).

Pure rules in `leases.py`, `waits.py`, `removals.py`, `resize.py`,
`snapshots.py` and `recover.py`; the state store contract in `state.py`,
with SQLite (`sqlite_state.py`) and etcd (`etcd_state.py`, `etcd_client.py`)
behind it, opened from a URL by `stores.py`; wire format in `protocol.py`;
trio server in `server.py` (decide → persist → apply); the one client
(CLI and agents) in `client.py`. The commands are in the top-level `cli`
package, which this package never imports.
"""
