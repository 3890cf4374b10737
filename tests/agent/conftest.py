from __future__ import annotations

import pytest

from tests.agent.harness import cleanup_mounts


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """FERRY_RUN_DIR for this test's daemons; every mount and daemon is cleaned up at teardown."""
    d = tmp_path / "run"
    d.mkdir()
    monkeypatch.setenv("FERRY_RUN_DIR", str(d))
    yield d
    cleanup_mounts(tmp_path, d)
