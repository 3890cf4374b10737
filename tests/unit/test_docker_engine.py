"""The agent's decisions about the local dockerd (agent/docker_engine.py);
the calls themselves are tested against a real dockerd in
tests/cluster/test_swarm.py."""
from __future__ import annotations

import pytest

from agent.docker_engine import RECHECK_S, RETRY_S, Step, delay_after, next_step, parse_docker_host


def test_next_step() -> None:
    assert next_step(None, "ferry") is Step.UNREACHABLE
    assert next_step([], "ferry") is Step.ACTIVATE
    assert next_step(["local"], "ferry") is Step.ACTIVATE
    assert next_step(["local", "ferry"], "ferry") is Step.LISTED
    assert next_step(["ferry2"], "ferry") is Step.ACTIVATE


def test_a_listed_plugin_is_checked_less_often() -> None:
    assert delay_after(Step.LISTED) == RECHECK_S > RETRY_S
    assert delay_after(Step.ACTIVATE) == delay_after(Step.UNREACHABLE) == RETRY_S


def test_parse_docker_host() -> None:
    assert parse_docker_host("unix:///var/run/docker.sock") == "/var/run/docker.sock"
    assert parse_docker_host("none") is None
    for bad in ("tcp://10.0.0.1:2375", "unix://", "/var/run/docker.sock", ""):
        with pytest.raises(ValueError, match="unix:///PATH"):
            parse_docker_host(bad)
