"""Fixtures: an in-process control service on a loopback port, and clients for it."""
from __future__ import annotations

import pytest

from control.client import ControlClient
from control.leases import Config
from control.server import ControlServer
from control.sqlite_state import SqliteState

TOKEN = "test-token-0123456789"


class Running:
    def __init__(self, server: ControlServer, port: int):
        self.server = server
        self.port = port
        self.addr = f"127.0.0.1:{port}"

    def client(self, token: str = TOKEN, **kw) -> ControlClient:
        return ControlClient(self.addr, token, **kw)


@pytest.fixture(scope="session")
def etcd3(tmp_path_factory):
    """A three-member etcd cluster (Debian's etcd-server) for the replica tests; a
    test that kills members leaves them to the next test's `ha` fixture to restart."""
    from tests.helpers.etcd import running_cluster
    with running_cluster(tmp_path_factory.mktemp("etcd3"), members=3) as cluster:
        yield cluster


@pytest.fixture
async def control(nursery, tmp_path):
    """A control service with a short TTL (2 s, heartbeat 0.5 s) on a free port."""
    state = SqliteState(tmp_path / "control.db")
    server = ControlServer(state, TOKEN, Config(ttl=2.0, heartbeat=0.5))
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    yield Running(server, port)
    await state.aclose()
