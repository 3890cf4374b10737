"""Volumes that follow containers between hosts (SPEC §2, §4; issue 3).

Each simulated host is a network + mount namespace running a real agent,
which runs real fsd daemons (FUSE) against one moto_server; the control
service runs in the root namespace. Bytes are always checked on ANOTHER
host than the one that wrote them.
"""
from __future__ import annotations

import hashlib
import sys
import time

import pytest

from tests.cluster.conftest import LEASE_TTL

WRITE = """
import os, sys
path, n, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = (seed.encode() * (n // len(seed) + 1))[:n]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, data)
os.fsync(fd)
os.close(fd)
"""

SHA = """
import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())
"""


def _expected(n: int, seed: str) -> str:
    return hashlib.sha256((seed.encode() * (n // len(seed) + 1))[:n]).hexdigest()


def _write(agent, volume: str, name: str, n: int, seed: str) -> None:
    agent.host.python(WRITE, str(agent.mountpoint(volume) / name), str(n), seed)


def _sha(agent, volume: str, name: str) -> str:
    return agent.host.python(SHA, str(agent.mountpoint(volume) / name)).strip()


def _ok(reply: dict) -> dict:
    assert reply.get("Err", "") == "", reply
    return reply


LAYOUTS = {"files": {}, "block": {"layout": "block", "size": "256M"}}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_planned_move_with_data_and_no_double_mount(cluster, layout):
    a = cluster.add_host("a")
    b = cluster.add_host("b")
    _ok(a.call("Create", Name="pg", Opts=LAYOUTS[layout]))
    _ok(b.call("Create", Name="pg", Opts=LAYOUTS[layout]))          # Swarm calls Create on every node: idempotent
    _ok(a.call("Mount", Name="pg", ID="c1"))
    _write(a, "pg", "table", 3_000_000, "move-me")

    busy = b.call("Mount", Name="pg", ID="c2")
    assert "a" in busy["Err"] and busy.get("Mountpoint", "") == "", busy   # names the owner, no double mount
    assert b.host.run("sh", "-c", f"grep -c ' {b.mountpoint('pg')} ' /proc/mounts",
                      check=False).stdout.strip() in (b"0", b"")

    _ok(a.call("Unmount", Name="pg", ID="c1"))          # the container is gone on A
    _ok(b.call("Mount", Name="pg", ID="c2"))            # planned move: no takeover needed
    assert _sha(b, "pg", "table") == _expected(3_000_000, "move-me")
    mounts = b.host.run("grep", f" {b.mountpoint('pg')} ", "/proc/mounts").stdout.decode()
    assert (" ext4 " in mounts) == (layout == "block"), mounts
    st = cluster.ferry("volume", "inspect", "pg")
    assert st.returncode == 0 and "b" in st.stdout, st.stdout + st.stderr
    _ok(b.call("Unmount", Name="pg", ID="c2"))
    assert "takeover" not in (b.host.dir / "cache" / "pg" / "fsd.log").read_text()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_host_loss_takeover_keeps_every_fsynced_byte_and_fences_the_old_owner(cluster, layout):
    a = cluster.add_host("a")
    b = cluster.add_host("b")
    _ok(a.call("Create", Name="db", Opts=LAYOUTS[layout]))
    _ok(a.call("Mount", Name="db", ID="c1"))
    _write(a, "db", "acked", 2_500_000, "acknowledged")
    a.host.link_down()
    a.host.kill_all()                                   # the host is gone: agent and fsd, kill -9
    started = time.monotonic()
    reply = b.call("Mount", Name="db", ID="c2")         # waits for A's lease to expire
    elapsed = time.monotonic() - started
    _ok(reply)
    assert _sha(b, "db", "acked") == _expected(2_500_000, "acknowledged")
    assert elapsed < LEASE_TTL + 30, elapsed
    _ok(b.call("Unmount", Name="db", ID="c2"))


def test_partitioned_owner_cannot_commit_after_takeover(cluster):
    """A loses the control service but still reaches the store; its lease
    expires, B takes over. A's next fsync must fail and nothing A wrote after
    the takeover may appear on B; everything A acknowledged before is on B."""
    a = cluster.add_host("a")
    b = cluster.add_host("b")
    _ok(a.call("Create", Name="q", Opts={}))
    _ok(a.call("Mount", Name="q", ID="c1"))
    _write(a, "q", "before", 100_000, "before-partition")
    a.host.cut_from_control()
    _ok(b.call("Mount", Name="q", ID="c2"))             # after A's lease expired
    late = a.host.run(sys.executable, "-c", WRITE, str(a.mountpoint("q") / "late"), "5000", "too-late",
                      check=False)
    assert late.returncode != 0, "the stale owner acknowledged an fsync after the takeover"
    assert _sha(b, "q", "before") == _expected(100_000, "before-partition")
    listing = b.host.run("ls", str(b.mountpoint("q"))).stdout.decode().split()
    assert "late" not in listing
    _ok(b.call("Unmount", Name="q", ID="c2"))


def test_control_restart_under_load_loses_nothing(cluster):
    a = cluster.add_host("a")
    b = cluster.add_host("b")
    _ok(a.call("Create", Name="busy", Opts={}))
    _ok(a.call("Mount", Name="busy", ID="c1"))
    writer = a.host.popen([sys.executable, "-c", """
import os, sys, time
d = sys.argv[1]
i = 0
end = time.time() + 6
while time.time() < end:
    fd = os.open(os.path.join(d, f"f{i:04d}"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, f"payload {i}".encode())
    os.fsync(fd)
    os.close(fd)
    print(i, flush=True)
    i += 1
""", str(a.mountpoint("busy"))], a.host.dir / "writer.log")
    time.sleep(1.5)
    cluster.kill_control()                               # control dies under load...
    time.sleep(1.0)
    cluster.start_control()                              # ...and comes back
    assert writer.wait(timeout=60) == 0, (a.host.dir / "writer.log").read_text()
    acked = [int(x) for x in (a.host.dir / "writer.log").read_text().split()]
    assert acked, "the writer made no progress"
    st = cluster.ferry("status")
    assert st.returncode == 0, st.stderr
    _ok(a.call("Unmount", Name="busy", ID="c1"))
    _ok(b.call("Mount", Name="busy", ID="c2"))
    names = set(b.host.run("ls", str(b.mountpoint("busy"))).stdout.decode().split())
    missing = [i for i in acked if f"f{i:04d}" not in names]
    assert not missing, f"fsync-acknowledged files missing on b: {missing[:10]}"
    _ok(b.call("Unmount", Name="busy", ID="c2"))


@pytest.mark.parametrize("endpoint,body,needle", [
    ("Mount", {"Name": "nope", "ID": "x"}, "nope"),
    ("Create", {"Name": "../etc", "Opts": {}}, "name"),
    ("Create", {"Name": "v", "Opts": {"durability": "cloud"}}, "durability"),
])
def test_bad_requests_across_the_cluster_are_refused_clearly(cluster, endpoint, body, needle):
    a = cluster.add_host("a")
    reply = a.call(endpoint, **body)
    assert needle in reply["Err"], reply
    assert cluster.ferry("volume", "ls").stdout.count("\n") <= 1


EXISTS = "import os, sys; print(os.path.exists(sys.argv[1]))"


def test_a_clone_on_another_host_is_independent_both_ways(cluster):
    """Issue 9: `docker volume create -o from=VOLUME@SNAP` on host b while the
    origin stays mounted on host a. Each host writes; neither sees the
    other's writes, then or after the two volumes swap hosts."""
    a = cluster.add_host("a")
    b = cluster.add_host("b")
    _ok(a.call("Create", Name="orig", Opts={}))
    _ok(a.call("Mount", Name="orig", ID="c1"))
    _write(a, "orig", "f", 3_000_000, "shared")
    r = cluster.ferry("snapshot", "create", "orig", "s1")
    assert r.returncode == 0, r.stderr
    assert "s1" in _ok(b.call("Get", Name="orig"))["Volume"]["Status"]["snapshots"]

    for bad, msg in [("orig@nosuch", "no snapshot 'nosuch'"), ("ghost@s1", "'ghost' does not exist"),
                     ("orig@2001-01-01T00:00:00Z", "before the oldest moment kept")]:
        err = b.call("Create", Name="copy", Opts={"from": bad})["Err"]
        assert msg in err, (bad, err)
        assert "copy" not in cluster.ferry("volume", "ls").stdout      # nothing recorded

    _ok(b.call("Create", Name="copy", Opts={"from": "orig@s1"}))
    _ok(b.call("Mount", Name="copy", ID="c2"))
    assert _sha(b, "copy", "f") == _expected(3_000_000, "shared")
    _write(b, "copy", "f", 1_000_000, "clone-wrote")
    _write(b, "copy", "only-clone", 1000, "c")
    _write(a, "orig", "only-origin", 1000, "o")
    assert _sha(a, "orig", "f") == _expected(3_000_000, "shared")
    assert b.host.python(EXISTS, str(b.mountpoint("copy") / "only-origin")).strip() == "False"
    assert a.host.python(EXISTS, str(a.mountpoint("orig") / "only-clone")).strip() == "False"

    # Swap hosts: what each wrote stays its own.
    _ok(a.call("Unmount", Name="orig", ID="c1"))
    _ok(b.call("Unmount", Name="copy", ID="c2"))
    _ok(a.call("Mount", Name="copy", ID="c3"))
    _ok(b.call("Mount", Name="orig", ID="c4"))
    assert _sha(a, "copy", "f") == _expected(1_000_000, "clone-wrote")
    assert _sha(b, "orig", "f") == _expected(3_000_000, "shared")
    assert a.host.python(EXISTS, str(a.mountpoint("copy") / "only-origin")).strip() == "False"
    assert b.host.python(EXISTS, str(b.mountpoint("orig") / "only-clone")).strip() == "False"
    _ok(a.call("Unmount", Name="copy", ID="c3"))
    _ok(b.call("Unmount", Name="orig", ID="c4"))
    info = cluster.ferry("volume", "inspect", "copy")
    assert "orig@s1" in info.stdout, info.stdout
