"""ferry control service: volumes, hosts, leases and requested moves (docs/cluster.md).

Pure rules in `leases.py`; state store interface in `state.py` (SQLite in
`sqlite_state.py`); wire format in `protocol.py`; trio server in `server.py`;
the one client (CLI and agents) in `client.py`; commands in `cli.py`.
"""
