"""Swarm services on ferry volumes, on a Swarm of simulated hosts (issue 23).

Each host is a network + mount namespace with its own dockerd and agent
(tests/cluster/conftest.py, dockerd.py); host a inits the Swarm and the
others join it as workers, over the test bridge.
"""
from __future__ import annotations

import json
import time

import pytest

from tests.cluster import dockerd as dk
from tests.cluster.swarm import CONVERGE_S, AckLog, Swarm, check_moved, start_fsync_service

pytestmark = pytest.mark.skipif(dk.available() is not None, reason=str(dk.available()))


@pytest.fixture
def swarm(cluster):
    s = Swarm(cluster)
    try:
        yield s
    finally:
        s.leave_all()


def test_a_fresh_node_takes_ferry_tasks_with_no_manual_step(swarm):
    """No `docker volume create` anywhere: the agents made their dockerds
    list the plugin, so the worker is eligible for a ferry-volume task."""
    swarm.add("a")
    swarm.add("b")
    swarm.service("--name", "app", "--constraint", f"node.id=={swarm.ids['b']}",
                  "--mount", "type=volume,source=sv,target=/data,volume-driver=ferry",
                  dk.IMAGE, "sh", "-c", "echo from-swarm > /data/f && sync && sleep 600")
    task = swarm.wait_running("app")
    assert task["Node"]
    cid = swarm.container_on("b", "app")
    deadline = time.monotonic() + 30
    while swarm.nodes["b"].docker("exec", cid, "cat", "/data/f", check=False).stdout.strip() != "from-swarm":
        assert time.monotonic() < deadline, "the task never wrote its file"
        time.sleep(0.2)
    inspect = swarm.nodes["b"].docker("volume", "inspect", "sv").stdout
    assert '"Driver": "ferry"' in inspect, inspect


@pytest.mark.parametrize("layout", ["files", "block"])
def test_drain_moves_the_task_with_every_acknowledged_fsync(swarm, cluster, tmp_path, layout):
    """`docker node update --availability drain`: the task moves to the
    other node and finds every line its predecessor's fsync acknowledged."""
    swarm.add("a")
    swarm.add("b")
    acks = AckLog(tmp_path / "acks")
    opts = ",volume-opt=layout=block,volume-opt=fs=ext4,volume-opt=size=256M" if layout == "block" else ""
    old_node = start_fsync_service(swarm, "db", f"type=volume,source=dbvol,target=/data,volume-driver=ferry{opts}",
                                   acks, "--stop-grace-period", "5s")
    swarm.manager.docker("node", "update", "--availability", "drain", swarm.ids[old_node])
    gap = acks.handover(swarm=swarm)
    print(f"drain, {layout}: {gap:.2f} s from the old task's last acknowledged fsync to the new task's first")
    check_moved(swarm, "db", acks)


def test_a_lost_node_s_task_restarts_elsewhere_with_every_acknowledged_fsync(swarm, cluster, tmp_path):
    """kill -9 of a whole node (dockerd, agent, fsd, the task): Swarm
    reschedules the task, ferry takes the volume over once the dead node's
    lease expires, and every acknowledged line is there."""
    swarm.add("a")
    swarm.add("b")
    swarm.add("c")
    swarm.manager.docker("node", "update", "--availability", "drain", swarm.ids["a"])   # tasks on b or c
    acks = AckLog(tmp_path / "acks")
    lost = start_fsync_service(swarm, "db", "type=volume,source=dbvol,target=/data,volume-driver=ferry", acks)
    swarm.kill_node(lost)
    gap = acks.handover(swarm=swarm)
    print(f"node loss: {gap:.2f} s from the old task's last acknowledged fsync to the new task's first")
    check_moved(swarm, "db", acks)


def test_replicas_on_one_volume_are_refused_and_per_task_volumes_work(cluster, tmp_path):
    """`--replicas 2` on one volume name: the task on the second node is
    refused (never two writers), saying why and how; `source=NAME-{{.Task.Slot}}`
    gives each replica its own volume and both run."""
    swarm = Swarm(cluster, in_use_wait=3.0)
    try:
        swarm.add("a")
        swarm.add("b")
        swarm.service("--name", "shared", "--replicas", "2", "--replicas-max-per-node", "1",
                      "--mount", "type=volume,source=one,target=/data,volume-driver=ferry",
                      dk.IMAGE, "sh", "-c", "echo $(cat /etc/hostname) >> /data/who && sleep 600")
        swarm.wait_running("shared")
        deadline = time.monotonic() + CONVERGE_S
        while not any("{{.Task.Slot}}" in t.get("Error", "") for t in swarm.tasks("shared")):
            assert time.monotonic() < deadline, f"no task was refused: {swarm.tasks('shared')}"
            time.sleep(0.5)
        err = next(t["Error"] for t in swarm.tasks("shared") if "{{.Task.Slot}}" in t.get("Error", ""))
        assert "in use on host" in err and "stop-first" in err, err
        running = [t for t in swarm.tasks("shared") if t["CurrentState"].startswith("Running")]
        assert len(running) == 1, running
        swarm.manager.docker("service", "rm", "shared")

        swarm.service("--name", "per-task", "--replicas", "2", "--replicas-max-per-node", "1",
                      "--mount", "type=volume,source=own-{{.Task.Slot}},target=/data,volume-driver=ferry",
                      dk.IMAGE, "sh", "-c", "echo $(cat /etc/hostname) >> /data/who && sleep 600")
        deadline = time.monotonic() + CONVERGE_S
        while len([t for t in swarm.tasks("per-task") if t["CurrentState"].startswith("Running")]) < 2:
            assert time.monotonic() < deadline, f"both replicas should run: {swarm.tasks('per-task')}"
            time.sleep(0.5)
        names = set(swarm.manager.docker("volume", "ls", "-q").stdout.split()) | \
            set(swarm.nodes["b"].docker("volume", "ls", "-q").stdout.split())
        assert {"own-1", "own-2"} <= names, names
    finally:
        swarm.leave_all()


def test_a_stack_file_creates_ferry_volumes_with_its_driver_opts(swarm, tmp_path):
    """`docker stack deploy` with `driver: ferry` and `driver_opts`: the
    volume is created with those options (ferry records them at create)."""
    swarm.add("a")
    stack = tmp_path / "stack.yml"
    stack.write_text(f"""
version: "3.8"
services:
  db:
    image: {dk.IMAGE}
    command: ["sh", "-c", "echo stacked > /data/f && sleep 600"]
    volumes:
      - data:/data
volumes:
  data:
    driver: ferry
    driver_opts:
      durability: local
      size: 3G
""")
    swarm.manager.docker("stack", "deploy", "--resolve-image", "never", "-c", str(stack), "st")
    swarm.wait_running("st_db")
    inspect = json.loads(swarm.manager.docker("volume", "inspect", "st_data").stdout)[0]
    assert inspect["Driver"] == "ferry", inspect
    status = inspect.get("Status") or {}
    assert status.get("durability") == "local", inspect
    cid = swarm.container_on("a", "st_db")
    assert swarm.manager.docker("exec", cid, "cat", "/data/f").stdout.strip() == "stacked"
    swarm.manager.docker("stack", "rm", "st")


def test_a_start_first_update_never_lets_two_nodes_write(cluster, tmp_path):
    """`--update-order start-first` with the new task on another node: its
    Mount waits for the old task, which Swarm keeps until the new one runs;
    after --in-use-wait the Mount fails and the update pauses, saying why.
    Meanwhile only the old task writes."""
    swarm = Swarm(cluster, in_use_wait=4.0)
    try:
        swarm.add("a")
        swarm.add("b")
        acks = AckLog(tmp_path / "acks")
        start_fsync_service(swarm, "db", "type=volume,source=dbvol,target=/data,volume-driver=ferry", acks,
                            "--replicas-max-per-node", "1", "--update-failure-action", "pause")
        swarm.manager.docker("service", "update", "--detach", "--update-order", "start-first",
                             "--env-add", "NEW=1", "db")
        deadline = time.monotonic() + CONVERGE_S
        while True:
            status = json.loads(swarm.manager.docker("service", "inspect", "db").stdout)[0].get("UpdateStatus") or {}
            if status.get("State") == "paused":
                break
            assert time.monotonic() < deadline, f"the update did not pause: {status} {swarm.tasks('db')}"
            time.sleep(0.5)
        assert "in use on host" in status.get("Message", "") + json.dumps(swarm.tasks("db")), status
        assert len(acks.writers()) == 1, f"two tasks acknowledged fsyncs: {acks.writers()}"
        before = len(acks.lines())
        acks.wait_for(lambda: len(acks.lines()) > before + 5, "the old task still writes", swarm=swarm)
    finally:
        swarm.leave_all()
