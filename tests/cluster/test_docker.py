"""Real Docker on simulated hosts: `docker volume create -d ferry`, `docker run
-v vol:/data` on host A, the same bytes in a container on host B; two
containers sharing a volume on one host; `docker volume rm` refused while in use."""
from __future__ import annotations

import pytest

from tests.cluster import dockerd as dk

pytestmark = pytest.mark.skipif(dk.available() is not None, reason=str(dk.available()))


@pytest.fixture
def docker_cluster(cluster):
    started: list[dk.Dockerd] = []

    def host(name: str) -> tuple:
        agent = cluster.add_host(name, docker=True)
        d = dk.Dockerd(agent.host)
        started.append(d)
        return agent, d

    try:
        yield host
    finally:
        for d in started:
            d.stop()


@pytest.mark.parametrize("layout", ["files", "block"])
def test_container_moves_to_another_host_and_finds_its_data(docker_cluster, layout):
    _, da = docker_cluster("a")
    _, db = docker_cluster("b")
    opts = ["-o", "layout=block", "-o", "fs=xfs", "-o", "size=320M"] if layout == "block" else []
    da.docker("volume", "create", "-d", "ferry", "-o", "durability=remote", *opts, "appdata")
    da.run("--rm", "-v", "appdata:/data", dk.IMAGE, "sh", "-c",
           "dd if=/dev/zero bs=1024 count=3000 2>/dev/null | sha256sum > /data/sum && "
           "echo written-on-a > /data/origin && dd if=/dev/zero of=/data/blob bs=1024 count=3000 2>/dev/null")
    # the container is gone on A; its volume was committed and released
    out = db.run("--rm", "--volume-driver", "ferry", "-v", "appdata:/data", dk.IMAGE, "sh", "-c",
                 "cat /data/origin; sha256sum < /data/blob; cat /data/sum").stdout.split()
    assert out[0] == "written-on-a"
    assert out[1] == out[3], "the blob read on B differs from what A wrote"
    inspect = db.docker("volume", "inspect", "appdata").stdout
    assert '"Driver": "ferry"' in inspect and '"durability": "remote"' in inspect, inspect
    assert ('"layout": "block"' in inspect) == (layout == "block"), inspect
    assert '"CreatedAt": "0001-01-01' not in inspect and '"CreatedAt": "20' in inspect, inspect


def test_two_containers_share_a_volume_and_rm_in_use_is_refused(docker_cluster):
    agent, da = docker_cluster("a")
    da.docker("volume", "create", "-d", "ferry", "shared")
    da.run("-d", "--name", "holder", "-v", "shared:/data", dk.IMAGE, "sleep", "300")
    # a second container on the same host: same fsd, reference counted by mount ID
    out = da.run("--rm", "-v", "shared:/data", dk.IMAGE, "sh", "-c",
                 "echo from-second > /data/x && cat /data/x").stdout.strip()
    assert out == "from-second"
    # the second container's Unmount must not have unmounted the volume under the first
    out = da.docker("exec", "holder", "cat", "/data/x").stdout.strip()
    assert out == "from-second"
    rm = da.docker("volume", "rm", "shared", check=False)
    assert rm.returncode != 0 and "in use" in (rm.stderr + rm.stdout), rm
    da.docker("rm", "-f", "holder")
    da.docker("volume", "rm", "shared")
    ls = da.docker("volume", "ls", "-q").stdout.split()
    assert "shared" not in ls


def _store_keys(store_url: str, name: str) -> list[str]:
    from fsd.store import open_store
    store = open_store(store_url)
    try:
        return sorted(store.list(name + "/"))
    finally:
        store.close()


@pytest.mark.parametrize("layout", ["files", "block"])
def test_volume_rm_frees_the_store_and_a_recreated_volume_is_empty(docker_cluster, cluster, layout):
    """The sequence of issue 8, as a user types it; a block volume too."""
    import json
    import time
    _, da = docker_cluster("a")
    opts = ["-o", "layout=block", "-o", "size=256M"] if layout == "block" else []
    da.docker("volume", "create", "-d", "ferry", *opts, "demo")
    da.run("--rm", "-v", "demo:/data", dk.IMAGE, "sh", "-c",
           "dd if=/dev/urandom of=/data/big bs=1M count=20 2>/dev/null; sync")
    assert len(_store_keys(cluster.store_url, "demo")) > 5
    da.docker("volume", "rm", "demo")
    deadline = time.monotonic() + 60
    while True:           # the deletion runs in the background; `ferry volume ls` shows it
        ls = json.loads(cluster.ferry("volume", "ls", "--json").stdout)
        if not (isinstance(ls, dict) and ls.get("removals")):
            break
        assert time.monotonic() < deadline, ls
        time.sleep(0.3)
    assert _store_keys(cluster.store_url, "demo") == []
    da.docker("volume", "create", "-d", "ferry", "demo")
    out = da.run("--rm", "-v", "demo:/data", dk.IMAGE, "ls", "-A", "/data").stdout.split()
    assert out == []


def test_a_block_volume_grows_under_a_running_container_and_keeps_its_size(docker_cluster, cluster):
    """`ferry volume resize` of an XFS block volume while a container writes
    to it: the holder grows it online (df in the container shows it, and more
    than the old size fits); a second resize while nothing mounts it is
    recorded and applied by the next mount, on another host."""
    import json

    def df_kib(d, *args: str) -> int:
        out = d.run("--rm", *args, "-v", "elastic:/data", dk.IMAGE, "df", "-k", "/data").stdout.splitlines()
        return int(out[-1].split()[1])
    _, da = docker_cluster("a")
    _, db = docker_cluster("b")
    da.docker("volume", "create", "-d", "ferry", "-o", "layout=block", "-o", "fs=xfs", "-o", "size=320M",
              "elastic")
    da.run("-d", "--name", "writer", "-v", "elastic:/data", dk.IMAGE, "sleep", "300")
    da.docker("exec", "writer", "sh", "-c", "echo before > /data/keep")
    small = int(da.docker("exec", "writer", "df", "-k", "/data").stdout.splitlines()[-1].split()[1])
    assert small < 320 << 10
    r = cluster.ferry("volume", "resize", "elastic", "640M")
    assert r.returncode == 0 and "grown online" in r.stdout, r.stdout + r.stderr
    grown = int(da.docker("exec", "writer", "df", "-k", "/data").stdout.splitlines()[-1].split()[1])
    assert grown > 1.8 * small, (small, grown)
    # more than the old size fits now, written by the running container
    da.docker("exec", "writer", "sh", "-c", "dd if=/dev/zero of=/data/big bs=1M count=400 2>/dev/null && sync")
    shrink = cluster.ferry("volume", "resize", "elastic", "500M")
    assert shrink.returncode != 0 and "only grow" in shrink.stderr, shrink.stdout + shrink.stderr
    da.docker("rm", "-f", "writer")
    # not mounted anywhere now: the size is recorded, the next mount (on B) grows it
    r = cluster.ferry("volume", "resize", "elastic", "1G")
    assert r.returncode == 0 and "next mount" in r.stdout, r.stdout + r.stderr
    inspect = json.loads(cluster.ferry("volume", "inspect", "elastic", "--json").stdout)
    assert inspect["options"]["size"] == str(1 << 30), inspect
    assert df_kib(db, "--volume-driver", "ferry") > 1.5 * grown
    out = db.run("--rm", "-v", "elastic:/data", dk.IMAGE, "sh", "-c", "cat /data/keep; ls -l /data/big").stdout
    assert out.startswith("before") and str(400 << 20) in out, out


def test_control_state_lost_then_rebuilt_from_the_store(docker_cluster, cluster):
    """Disaster recovery with real Docker: the control host's disk dies (a new,
    empty SQLite file); `docker volume create` of a name the store holds is
    refused with the recovery command; `ferry control recover --store` brings
    back the volume, its options, its snapshot and its clone; containers on
    another host read the data; a second recover changes nothing."""
    import os

    _, da = docker_cluster("a")
    _, db = docker_cluster("b")
    da.docker("volume", "create", "-d", "ferry", "-o", "durability=local", "pgdata")
    da.run("--rm", "-v", "pgdata:/data", dk.IMAGE, "sh", "-c", "echo precious > /data/table")
    r = cluster.ferry("snapshot", "create", "pgdata", "nightly")
    assert r.returncode == 0, r.stdout + r.stderr
    da.docker("volume", "create", "-d", "ferry", "-o", "from=pgdata@nightly", "pgtest")

    cluster.kill_control()
    for suffix in ("", "-wal", "-shm", ".lock"):
        p = cluster.dir / f"control.db{suffix}"
        if p.exists():
            os.remove(p)
    cluster.start_control()

    refused = db.docker("volume", "create", "-d", "ferry", "pgdata", check=False)
    assert refused.returncode != 0, refused.stdout
    assert "exists in the store" in refused.stderr and "ferry control recover" in refused.stderr, refused.stderr

    rec = cluster.ferry("control", "recover", "--store", cluster.store_url)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert "recovered: volume pgdata" in rec.stdout and "recovered: volume pgtest" in rec.stdout, rec.stdout
    inspect = cluster.ferry("volume", "inspect", "pgdata", "--json")
    assert '"durability": "local"' in inspect.stdout and "nightly" in inspect.stdout, inspect.stdout

    out = db.run("--rm", "--volume-driver", "ferry", "-v", "pgdata:/data", dk.IMAGE, "cat", "/data/table").stdout
    assert out.strip() == "precious"
    out = db.run("--rm", "--volume-driver", "ferry", "-v", "pgtest:/data", dk.IMAGE, "cat", "/data/table").stdout
    assert out.strip() == "precious"
    again = cluster.ferry("control", "recover", "--store", cluster.store_url)
    assert again.returncode == 0 and "recovered:" not in again.stdout, again.stdout


def test_dockerd_lists_the_plugin_again_after_it_restarts(docker_cluster):
    """Swarm places ferry volumes only on nodes whose dockerd lists the
    plugin, and a dockerd restart forgets a host-installed plugin until it
    is used: the agent makes it list ferry again, with no docker command."""
    import time
    agent, da = docker_cluster("a")

    def listed(d: dk.Dockerd) -> bool:
        return "ferry" in d.docker("info", "--format", "{{json .Plugins.Volume}}", check=False).stdout

    deadline = time.monotonic() + 60
    while not listed(da):
        assert time.monotonic() < deadline, "dockerd never listed the ferry plugin"
        time.sleep(0.3)
    da.stop()
    db = dk.Dockerd(agent.host)          # the same host, data root and API socket: a restart
    try:
        deadline = time.monotonic() + 60
        while not listed(db):
            assert time.monotonic() < deadline, "the restarted dockerd never listed the ferry plugin"
            time.sleep(0.3)
    finally:
        db.stop()
