"""A real database on a ferry volume under kill -9 (issue 7, slow).

PostgreSQL (Debian's, run as user postgres) keeps its data directory on a
ferry mount over moto_server. pgbench runs its TPC-B-like load while a
client inserts rows one transaction at a time and records each id (with the
time) only after COMMIT returned. Then kill -9 of postgres and of the ferry
daemon together; recovery alternates between the same cache dir and a
--takeover on a fresh one. After each recovery:
  - postgres's own WAL recovery succeeds (it starts);
  - amcheck's bt_index_check passes on every btree index;
  - pgbench's balances add up (accounts = tellers = branches = history);
  - every acknowledged row is there (with durability=local on a fresh
    cache: every row acknowledged before the upload horizon).

Every CI run has one short round per durability mode (one crash on the
same cache); the slow form runs several, alternating same cache and takeover:

    bash scripts/test.sh -m slow -k postgres
    FERRY_PG_TRIALS=N   crash/recovery rounds per durability mode in the slow form (default 4)
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.mount import FerryMount, fsck_clean

VOL = "pg"
COMMIT_INTERVAL = 0.5
UPLOAD_SLACK = 2.5
PG_BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = [pytest.mark.timeout(3600)]

# (durability, crash rounds): one short round of each mode in every run, several under -m slow
CASES = [pytest.param(d, 1, id=f"{d}-short") for d in ("remote", "local")] + \
        [pytest.param(d, None, id=f"{d}-slow", marks=pytest.mark.slow) for d in ("remote", "local")]


def _need_postgres() -> None:
    if not (PG_BIN / "postgres").exists() or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL 15 (Debian) is not installed: run the tests through `bash scripts/test.sh`, "
                    "which installs it")


def as_postgres(*cmd: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *cmd], capture_output=True, text=True,
                          check=check, timeout=timeout, **kw)


class Postgres:
    def __init__(self, datadir: Path, sockdir: Path, port: int) -> None:
        self.datadir, self.sockdir, self.port = datadir, sockdir, port

    def start(self) -> None:
        r = as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "300", "-l",
                        str(self.sockdir / "pg.log"), "-o",
                        f"-k {self.sockdir} -p {self.port} -c listen_addresses='' -c fsync=on "
                        f"-c full_page_writes=on -c synchronous_commit=on", "start", check=False)
        if r.returncode != 0:
            raise AssertionError(f"postgres did not start (WAL recovery failed?): {r.stdout}{r.stderr}\n"
                                 f"{(self.sockdir / 'pg.log').read_text(errors='replace')[-4000:]}")

    def stop(self) -> None:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop", check=False)

    def kill9(self) -> None:
        """kill -9 of the postmaster and every child it has."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        victims = [pid]
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                        victims.append(int(p.name))
                except (OSError, ValueError, IndexError):
                    pass
        for v in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(v, signal.SIGKILL)
        # Postgres refuses to start while the pid in postmaster.pid exists, and
        # a zombie exists until its parent reaps it. The postmaster's parent is
        # PID 1; on a host it reaps at once, in some sandboxes only after a few
        # seconds. Wait for that, as an operator's restart would.
        deadline = time.monotonic() + 120
        while any(Path(f"/proc/{v}").exists() for v in victims):
            if time.monotonic() > deadline:
                raise AssertionError(f"killed postgres processes {victims} were never reaped by PID 1")
            time.sleep(0.1)

    def sql(self, query: str, db: str = "postgres") -> str:
        r = as_postgres(str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                        str(self.sockdir), "-p", str(self.port), "-d", db, "-c", query, check=False)
        if r.returncode != 0:
            raise AssertionError(f"{query!r} failed: {r.stderr}")
        return r.stdout.strip()


class AckedInserts(threading.Thread):
    """Insert one row per transaction through one psql session; record the
    id (and when) only after psql reports the COMMIT returned."""

    def __init__(self, pg: Postgres, start_id: int) -> None:
        super().__init__(daemon=True)
        self.pg = pg
        self.next_id = start_id
        self.acked: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        p = subprocess.Popen(["runuser", "-u", "postgres", "--", "stdbuf", "-oL", str(PG_BIN / "psql"), "-X",
                              "-q", "-A", "-t", "-h", str(self.pg.sockdir), "-p", str(self.pg.port), "-d", "bench"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             bufsize=1)
        try:
            assert p.stdin is not None and p.stdout is not None
            while not self.stop.is_set():
                i = self.next_id
                p.stdin.write(f"INSERT INTO acked VALUES ({i}, repeat('x', 500));\n\\echo ack {i}\n")
                p.stdin.flush()
                line = p.stdout.readline()
                if line.strip() != f"ack {i}":
                    return              # postgres died under us: not acknowledged
                self.acked.append((time.monotonic(), i))
                self.next_id += 1
        except (BrokenPipeError, OSError):
            return
        finally:
            p.kill()
            p.wait()


def _check_database(pg: Postgres, acked: list[tuple[float, int]], horizon: float, where: str) -> str:
    pg.sql("CREATE EXTENSION IF NOT EXISTS amcheck", db="bench")
    n = pg.sql("SELECT count(*) FROM (SELECT bt_index_check(c.oid, true) FROM pg_index i "
               "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
               "WHERE a.amname = 'btree' AND c.relpersistence <> 't') s", db="bench")
    assert int(n) > 50, f"{where}: amcheck ran on only {n} btree indexes"
    sums = pg.sql("SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM "
                  "pgbench_tellers), (SELECT sum(bbalance) FROM pgbench_branches), "
                  "(SELECT coalesce(sum(delta), 0) FROM pgbench_history)", db="bench").split("|")
    assert len(set(sums)) == 1, f"{where}: pgbench balances do not add up: {sums}"
    must = {i for t, i in acked if t <= horizon}
    present = {int(x) for x in pg.sql("SELECT id FROM acked", db="bench").split()}
    lost = sorted(must - present)
    assert not lost, f"{where}: {len(lost)} acknowledged rows lost, e.g. {lost[:10]}"
    return f"amcheck clean on {n} btree indexes, balances {sums[0]}, {len(must)} acknowledged rows all there"


@pytest.fixture
def open_dir():
    """A directory user postgres can traverse (pytest's tmp_path is 0700 root)."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="ferry-pg-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("durability,rounds", CASES)
def test_postgres_survives_kill9_with_every_acknowledged_row(tmp_path, open_dir, s3_store_url, durability, rounds):
    _need_postgres()
    trials = rounds if rounds is not None else int(os.environ.get("FERRY_PG_TRIALS", "4"))
    seed = int(os.environ.get("FERRY_TORTURE_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    print(f"postgres crash test ({durability}): seed {seed}")
    opts = [f"durability={durability}", f"commit_interval={COMMIT_INTERVAL}"]
    sockdir = open_dir / "sock"
    sockdir.mkdir()
    shutil.chown(sockdir, "postgres", "postgres")
    port = 20000 + rnd.randrange(20000)
    m = FerryMount(tmp_path, open_dir / "mnt", tmp_path / "cache-0")
    with m:
        m.mkfs(s3_store_url, VOL)
        m.mount(s3_store_url, VOL, options=opts)
        datadir = m.mountpoint / "pgdata"
        datadir.mkdir()
        shutil.chown(datadir, "postgres", "postgres")
        os.chmod(datadir, 0o700)
        as_postgres(str(PG_BIN / "initdb"), "--no-sync", "-D", str(datadir), "-U", "postgres", "-A", "trust")
        m.umount()                                   # a clean release: the fresh cluster is in the store
        m.mount(s3_store_url, VOL, options=opts)
        pg = Postgres(datadir, sockdir, port)
        pg.start()
        try:
            pg.sql("CREATE DATABASE bench")
            as_postgres(str(PG_BIN / "pgbench"), "-i", "-q", "-s", "1", "-h", str(sockdir), "-p", str(port), "bench")
            pg.sql("CREATE TABLE acked (id int PRIMARY KEY, pad text)", db="bench")
            acked: list[tuple[float, int]] = []
            hosts = 0
            for trial in range(trials):
                fresh = trial % 2 == 1
                where = f"{durability} trial {trial} (seed {seed}, {'fresh cache' if fresh else 'same cache'})"
                bench = subprocess.Popen(["runuser", "-u", "postgres", "--", str(PG_BIN / "pgbench"), "-n", "-c", "3",
                                          "-T", "600", "-h", str(sockdir), "-p", str(port), "bench"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                # (a row inserted but not acknowledged may have survived: start past it)
                inserts = AckedInserts(pg, start_id=int(pg.sql("SELECT coalesce(max(id), 0) FROM acked",
                                                               db="bench")) + 1)
                inserts.start()
                time.sleep(rnd.uniform(4.0, 10.0))
                killed_at = time.monotonic()
                pg.kill9()
                m.kill9()
                inserts.stop.set()
                inserts.join(timeout=60)
                bench.kill()
                bench.wait()
                acked += inserts.acked
                if fresh:
                    hosts += 1
                    m.mount(s3_store_url, VOL, cache_dir=tmp_path / f"cache-{hosts}", takeover=True, options=opts)
                else:
                    m.mount(s3_store_url, VOL, options=opts)
                pg.start()                           # postgres's own WAL recovery
                horizon = killed_at - (COMMIT_INTERVAL + UPLOAD_SLACK if (fresh and durability == "local") else 0)
                verdict = _check_database(pg, acked, horizon, where)
                if fresh and durability == "local":  # rows after the horizon may be gone for good
                    present = {int(x) for x in pg.sql("SELECT id FROM acked", db="bench").split()}
                    acked = [(t, i) for t, i in acked if i in present]
                print(f"{where}: {len(inserts.acked)} rows acknowledged this round; {verdict}")
        finally:
            pg.kill9() if not m.running else pg.stop()
        m.umount()
    fsck_clean(s3_store_url, VOL)
