"""`ferry control serve` as a real subprocess, driven by the `ferry` CLI: exit codes,
messages, state surviving a restart, TLS."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOKEN = "cli-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ferry(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          env=e, timeout=timeout, cwd=Path(__file__).parents[2])


class Service:
    def __init__(self, tmp: Path, extra: list[str] | None = None):
        self.tmp = tmp
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.extra = extra or []
        self.token_file = tmp / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.token_file.chmod(0o600)
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "control.log"

    def start(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "control", "serve", "--listen", self.addr,
                 "--state", f"sqlite:{self.tmp / 'control.db'}", "--token-file", str(self.token_file),
                 "--lease-ttl", "4", "--heartbeat", "1", *self.extra],
                stdout=logf, stderr=logf, cwd=Path(__file__).parents[2], start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("control service did not start: " + self.log.read_text())

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def env(self) -> dict:
        return {"FERRY_CONTROL": self.addr, "FERRY_TOKEN": TOKEN}


@pytest.fixture
def service(tmp_path):
    s = Service(tmp_path)
    s.start()
    yield s
    s.stop(signal.SIGKILL)


def test_cli_end_to_end_and_restart(service):
    env = service.env()
    r = ferry("volume", "create", "pg", "-o", "durability=local", "--label", "app=pg", env=env)
    assert r.returncode == 0, r.stderr
    assert ferry("volume", "create", "pg", "-o", "durability=local", "--label", "app=pg", env=env).returncode == 0
    r = ferry("volume", "create", "pg", env=env)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = ferry("volume", "create", "bad/name", env=env)
    assert r.returncode == 2 and "contains '/'" in r.stderr
    r = ferry("volume", "create", "x", "-o", "colour=blue", env=env)
    assert r.returncode == 2 and "known:" in r.stderr
    r = ferry("volume", "inspect", "pg", env=env)
    assert r.returncode == 0 and "durability    local" in r.stdout and "owner         none" in r.stdout
    r = ferry("volume", "inspect", "nope", env=env)
    assert r.returncode == 1 and "does not exist" in r.stderr

    # A host takes the lease through the shared client, as an agent would.
    import trio

    from control.client import ControlClient

    async def agent():
        async with ControlClient(service.addr, TOKEN) as c:
            await c.host_register("host-a", "10.0.0.1", "0.1.0")
            assert (await c.lease_acquire("pg", "host-a"))["status"] == "granted"
            await c.host_heartbeat("host-a", [{"name": "pg", "in_use": True, "epoch": 3, "upload_lag_s": 1.25}])
    trio.run(agent)

    r = ferry("volume", "ls", env=env)
    assert r.returncode == 0 and "pg" in r.stdout and "host-a" in r.stdout and "1.2s" in r.stdout
    r = ferry("volume", "inspect", "pg", "--json", env=env)
    v = json.loads(r.stdout)
    assert v["lease"]["host"] == "host-a" and v["lease"]["epoch"] == 3
    r = ferry("volume", "rm", "pg", env=env)
    assert r.returncode == 1 and "host-a" in r.stderr
    r = ferry("volume", "move", "pg", "--to", "host-a", env=env)
    assert r.returncode == 0 and "already on host-a" in r.stdout
    r = ferry("hosts", "ls", env=env)
    assert r.returncode == 0 and "host-a" in r.stdout and "alive" in r.stdout
    r = ferry("status", env=env)
    assert r.returncode == 0 and "1 host(s), 1 alive" in r.stdout and "pg" in r.stdout

    # Restart the service: volumes, hosts, leases and epochs survive; the host gets a grace TTL.
    service.stop(signal.SIGKILL)
    service.start()
    r = ferry("status", "--json", env=env)
    st = json.loads(r.stdout)
    assert [v["name"] for v in st["volumes"]] == ["pg"]
    lease = st["volumes"][0]["lease"]
    assert lease["host"] == "host-a" and lease["epoch"] == 3 and lease["alive"] is True
    assert st["volumes"][0]["options"] == {"durability": "local"}
    r = ferry("volume", "rm", "pg", env=env)
    assert r.returncode == 1                      # still held by a live host after the restart


def test_cli_errors_unauthorized_unreachable_usage(service, tmp_path):
    r = ferry("volume", "ls", env={"FERRY_CONTROL": service.addr, "FERRY_TOKEN": "wrong-token-0123456789"})
    assert r.returncode == 1 and "token" in r.stderr
    r = ferry("volume", "ls", env={"FERRY_CONTROL": f"127.0.0.1:{free_port()}", "FERRY_TOKEN": TOKEN})
    assert r.returncode == 1 and "cannot reach the control service" in r.stderr and "--control" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "FERRY_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "cli", "volume", "ls", "--control", service.addr],
                       capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2])
    assert r.returncode == 2 and "FERRY_TOKEN" in r.stderr
    r = ferry("volume", "ls", "--control", "host:notaport", env={"FERRY_TOKEN": TOKEN})
    assert r.returncode == 2
    r = ferry("volume", "move", "x", env=service.env())
    assert r.returncode == 2                      # --to missing
    r = ferry("control", "serve", "--state", "etcd://127.0.0.1:1", "--etcd-timeout", "1",
              "--token-file", str(service.token_file))
    assert r.returncode == 1 and "etcd did not answer" in r.stderr and "127.0.0.1:1" in r.stderr
    r = ferry("control", "serve", "--state", f"sqlite:{tmp_path}/x.db", "--lease-ttl", "1",
              "--token-file", str(service.token_file))
    assert r.returncode == 2 and "heartbeat" in r.stderr
    r = ferry("volume", "--help")
    assert r.returncode == 0 and "examples:" in r.stdout


def test_tls(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("openssl cannot make a test certificate")
    s = Service(tmp_path, ["--tls-cert", str(cert), "--tls-key", str(key)])
    s.start()
    try:
        r = ferry("status", "--tls-ca", str(cert), env=s.env())
        assert r.returncode == 0, r.stderr
        r = ferry("status", env=s.env())              # plain TCP against a TLS server
        assert r.returncode == 1
        r = ferry("status", "--tls", env=s.env())     # system CAs do not trust the self-signed cert
        assert r.returncode == 1 and "cannot reach" in r.stderr
    finally:
        s.stop(signal.SIGKILL)


def test_mutual_tls_without_token(tmp_path):
    def ossl(*a):
        r = subprocess.run(["openssl", *a], capture_output=True, text=True, cwd=tmp_path)
        if r.returncode != 0:
            pytest.skip(f"openssl failed: {r.stderr[-200:]}")
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=ferry-ca",
         "-keyout", "ca.key", "-out", "ca.pem")
    (tmp_path / "srv.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("srv", ["-extfile", "srv.ext"]), ("cli", [])):
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.csr")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "1", "-out", f"{name}.pem", *ext)
    s = Service(tmp_path, ["--tls-cert", str(tmp_path / "srv.pem"), "--tls-key", str(tmp_path / "srv.key"),
                           "--tls-client-ca", str(tmp_path / "ca.pem")])
    env = {k: v for k, v in os.environ.items() if k != "FERRY_TOKEN"}
    # No --token-file and no FERRY_TOKEN: mutual TLS authenticates.
    with open(s.log, "ab") as logf:
        s.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "control", "serve", "--listen", s.addr,
             "--state", f"sqlite:{tmp_path / 'control.db'}", *s.extra],
            stdout=logf, stderr=logf, cwd=Path(__file__).parents[2], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert s.proc.poll() is None, s.log.read_text()
            try:
                socket.create_connection(("127.0.0.1", s.port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        base = [sys.executable, "-m", "cli", "status", "--control", s.addr, "--tls-ca", str(tmp_path / "ca.pem")]
        r = subprocess.run(base + ["--tls-cert", str(tmp_path / "cli.pem"), "--tls-key", str(tmp_path / "cli.key")],
                           capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2])
        assert r.returncode == 0, r.stderr
        r = subprocess.run(base, capture_output=True, text=True, env={**env, "FERRY_TOKEN": "anything-at-all-0123"},
                           cwd=Path(__file__).parents[2])
        assert r.returncode == 1                  # no client certificate: refused at the handshake
    finally:
        s.stop(signal.SIGKILL)


def test_token_rules_and_a_replica_list(service, tmp_path):
    """A short token or a token file every user can read is refused with the fix;
    a --control list whose first replica is down is served by the next one."""
    r = ferry("volume", "ls", env={"FERRY_CONTROL": service.addr, "FERRY_TOKEN": "x"})
    assert r.returncode == 2 and "at least 16" in r.stderr and "head -c 32" in r.stderr
    loose = tmp_path / "loose-token"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    r = ferry("volume", "ls", "--control", service.addr, "--token-file", str(loose))
    assert r.returncode == 2 and "readable by every user" in r.stderr and f"chmod 600 {loose}" in r.stderr
    r = ferry("control", "serve", "--state", f"sqlite:{tmp_path}/y.db", "--token-file", str(loose))
    assert r.returncode == 2 and "chmod 600" in r.stderr
    dead = f"127.0.0.1:{free_port()}"
    r = ferry("volume", "ls", "--control", f"{dead},{service.addr}", env={"FERRY_TOKEN": TOKEN})
    assert r.returncode == 0, r.stderr
    r = ferry("volume", "ls", "--control", f"{dead},{dead}", env={"FERRY_TOKEN": TOKEN})
    assert r.returncode == 1 and "tried every replica" in r.stderr


def test_token_from_ferry_token_file_and_which_source_wins(service, tmp_path):
    """FERRY_TOKEN_FILE names the token file when neither --token-file nor FERRY_TOKEN
    is given (the quickstart relies on it); FERRY_TOKEN wins over it."""
    env = {k: v for k, v in os.environ.items() if k not in ("FERRY_TOKEN", "FERRY_TOKEN_FILE")}
    bad = tmp_path / "bad-token"
    bad.write_text("b" * 32)
    bad.chmod(0o600)

    def ls(extra: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", "volume", "ls", "--control", service.addr],
                              capture_output=True, text=True, timeout=30, env={**env, **extra},
                              cwd=Path(__file__).parents[2])

    assert ls({"FERRY_TOKEN_FILE": str(service.token_file)}).returncode == 0
    r = ls({"FERRY_TOKEN_FILE": str(bad)})
    assert r.returncode != 0 and "unauthorized" in r.stderr.lower(), r.stderr
    assert ls({"FERRY_TOKEN_FILE": str(bad), "FERRY_TOKEN": TOKEN}).returncode == 0
    if not os.path.exists("/etc/ferry/token"):
        r = ls({})
        assert r.returncode == 2 and "FERRY_TOKEN_FILE" in r.stderr, r.stderr
