"""Crash torture (SPEC §2.1, §2.3, §2.4; issue 7): random writers on a
ferry mount over moto_server, kill -9 of the daemon at a random moment,
recovery alternately on the same cache dir and as a --takeover on a fresh
one (another host), in both durability modes. After every recovery each
writer's subtree must be a state the model allows (tests/helpers/crashmodel.py:
every acknowledged fact holds, nothing appears that was never written), and
`ferry fs fsck` must be clean. Each trial continues on the tree the
previous recovery left.

    FERRY_TORTURE_TRIALS=N  trials per durability mode (default 12)
    FERRY_TORTURE_SEED=S    first seed (default: random, printed); trial i uses S+i

The `slow` test runs FERRY_TORTURE_CHAINS (default 4) chains of
FERRY_TORTURE_SLOW_TRIALS (default 40) trials per mode, each chain on a
fresh volume.
"""
from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.crashmodel import History, Violation, Writer, check_tree, read_state
from tests.helpers.mount import FerryMount, fsck_clean, run_ferry

VOL = "torture"
WRITERS = 3
COMMIT_INTERVAL = 0.5
# durability=local promises a lost host loses at most what was not uploaded
# yet, which the commit interval bounds; this is the slack on a loaded CI box.
UPLOAD_SLACK = 2.5


# With `gc`: the owner snapshots every 4 segments and collects every 0.3 s
# with no grace, and a standalone `ferry fs gc --grace 0` from "another host"
# runs at a random moment of half the trials; the kill -9 lands anywhere in
# those passes too.
GC_OPTS = ["snapshot_every=4", "gc_interval=0.3s", "gc_grace=0"]


def _standalone_gc(store_url: str, delay: float, out: list) -> None:
    time.sleep(delay)
    out.append(run_ferry("fs", "gc", "--store", store_url, VOL, "--grace", "0"))


def run_trials(tmp_path: Path, store_url: str, mode: str, trials: int, seed0: int, gc: bool = False,
               mkfs_opts: tuple[str, ...] = ()) -> None:
    opts = [f"durability={mode}", f"commit_interval={COMMIT_INTERVAL}"] + (GC_OPTS if gc else [])
    m = FerryMount(tmp_path, tmp_path / "mnt", tmp_path / "cache-0")
    with m:
        m.mkfs(store_url, VOL, options=(["history=0"] if gc else []) + list(mkfs_opts))
        m.mount(store_url, VOL, options=opts)
        for w in range(WRITERS):
            (m.mountpoint / f"w{w}").mkdir()
        fd = os.open(m.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
        os.close(fd)
        hosts = 0
        for trial in range(trials):
            seed = seed0 + trial
            fresh = trial % 2 == 1
            rnd = random.Random(seed)
            where = f"{mode} trial {trial} (seed {seed}, recovery on {'a fresh cache' if fresh else 'the same cache'})"
            histories = []
            for w in range(WRITERS):
                root = m.mountpoint / f"w{w}"
                state, next_id = read_state(root)
                histories.append(History(root=root, states=[state], next_id=next_id))
            writers = [Writer(h, random.Random(rnd.random())) for h in histories]
            threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
            run_for = rnd.uniform(2.5, 5.0) if (fresh and mode == "local") else rnd.uniform(0.3, 2.5)
            gc_runs: list = []
            if gc and rnd.random() < 0.5:
                threads.append(threading.Thread(target=_standalone_gc, args=(store_url, rnd.uniform(0, run_for),
                                                                              gc_runs), daemon=True))
            for t in threads:
                t.start()
            time.sleep(run_for)
            killed_at = time.monotonic()
            m.kill9()
            passes = m.log().count("GC freed")
            for w in writers:
                w.stop.set()
            for t in threads:
                t.join(timeout=60)
            for w in writers:
                assert w.failed_at is None or w.failed_at >= killed_at, \
                    f"{where}: a writer failed before the kill: {w.error!r}\n{m.log()[-3000:]}"
            for r in gc_runs:
                assert r.returncode == 0, f"{where}: standalone GC failed: {r.stdout}{r.stderr}"
            if fresh:
                hosts += 1
                m.mount(store_url, VOL, cache_dir=tmp_path / f"cache-{hosts}", takeover=True, options=opts)
            else:
                m.mount(store_url, VOL, options=opts)
            horizon = killed_at - (COMMIT_INTERVAL + UPLOAD_SLACK if (fresh and mode == "local") else 0)
            for h in histories:
                try:
                    check_tree(h, horizon)
                except Violation as e:
                    raise AssertionError(f"{where}: {e}\n{_diagnose(m, store_url, opts, histories, horizon, tmp_path)}"
                                         f"\n--- daemon log ---\n{m.log()[-4000:]}") from None
            acks = sum(len(h.acks) for h in histories)
            ops = sum(len(h.ops) for h in histories)
            print(f"{where}: {ops} ops, {acks} acknowledgements, ran {run_for:.1f} s"
                  + (f", {passes} GC passes freed objects, {len(gc_runs)} standalone GC" if gc else "") + ": ok")
            fsck_clean(store_url, VOL)
        m.umount()
    fsck_clean(store_url, VOL)


def _diagnose(m: FerryMount, store_url: str, opts: list[str], histories: list[History], horizon: float,
              tmp_path: Path) -> str:
    """After a violation: does the store itself hold the wrong state, or only
    this host's local state (working copy, recovery)? Mount the store on a
    fresh cache and check again."""
    try:
        m.kill9()
        m.mount(store_url, VOL, cache_dir=tmp_path / "cache-diagnose", takeover=True, options=opts)
        verdicts = []
        for h in histories:
            try:
                check_tree(h, horizon)
                verdicts.append(f"{h.root.name}: ok")
            except Violation as e:
                verdicts.append(f"{h.root.name}: {e}")
        return "a fresh-cache mount of the same store says: " + "; ".join(verdicts)
    except Exception as e:  # noqa: BLE001 - a diagnosis only
        return f"(no fresh-cache diagnosis: {e!r})"


def _seed() -> int:
    s = int(os.environ.get("FERRY_TORTURE_SEED", random.randrange(1 << 30)))
    print(f"crash torture: first seed {s} (FERRY_TORTURE_SEED={s} repeats this run)")
    return s


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_crash_torture(tmp_path, s3_store_url, mode):
    run_trials(tmp_path, s3_store_url, mode, int(os.environ.get("FERRY_TORTURE_TRIALS", "8")), _seed())


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_crash_torture_with_gc(tmp_path, s3_store_url, mode):
    """Issue 8: the same model, with the owner's background GC and a
    standalone GC pass racing the writers and the kill."""
    run_trials(tmp_path, s3_store_url, mode, int(os.environ.get("FERRY_TORTURE_GC_TRIALS", "6")), _seed(), gc=True)


def _encrypt(tmp_path: Path, monkeypatch) -> tuple[str, ...]:
    """Every ferry process of the test (mkfs, the daemons, fsck, GC) gets the key from $FERRY_KEY_FILE."""
    key = tmp_path / "volume.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    monkeypatch.setenv("FERRY_KEY_FILE", str(key))
    return ("encryption=aes-256-gcm",)


@pytest.mark.parametrize("mode", ["remote", "local"])
def test_crash_torture_encrypted(tmp_path, s3_store_url, mode, monkeypatch):
    """Issue 21: the same model on an encrypted volume, with GC (sealed journal,
    snapshots, pins and data; takeover on a fresh cache unwraps the key again)."""
    run_trials(tmp_path, s3_store_url, mode, int(os.environ.get("FERRY_TORTURE_ENC_TRIALS", "4")), _seed(),
               gc=True, mkfs_opts=_encrypt(tmp_path, monkeypatch))


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("chain", range(int(os.environ.get("FERRY_TORTURE_CHAINS", "2"))))
@pytest.mark.parametrize("mode", ["remote", "local"])
def test_crash_torture_encrypted_long(tmp_path, s3_store_url, mode, chain, monkeypatch):
    trials = int(os.environ.get("FERRY_TORTURE_SLOW_TRIALS", "40"))
    run_trials(tmp_path, s3_store_url, mode, trials, _seed() + chain * 100_000 + 70_000, gc=True,
               mkfs_opts=_encrypt(tmp_path, monkeypatch))


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("chain", range(int(os.environ.get("FERRY_TORTURE_CHAINS", "4"))))
@pytest.mark.parametrize("mode", ["remote", "local"])
def test_crash_torture_with_gc_long(tmp_path, s3_store_url, mode, chain):
    """FERRY_TORTURE_CHAINS chains of FERRY_TORTURE_SLOW_TRIALS trials per mode with GC."""
    trials = int(os.environ.get("FERRY_TORTURE_SLOW_TRIALS", "40"))
    run_trials(tmp_path, s3_store_url, mode, trials, _seed() + chain * 100_000 + 50_000, gc=True)


@pytest.mark.slow
@pytest.mark.timeout(7200)
@pytest.mark.parametrize("chain", range(int(os.environ.get("FERRY_TORTURE_CHAINS", "4"))))
@pytest.mark.parametrize("mode", ["remote", "local"])
def test_crash_torture_long(tmp_path, s3_store_url, mode, chain):
    """FERRY_TORTURE_CHAINS chains (default 4) of FERRY_TORTURE_SLOW_TRIALS
    trials (default 40) per mode, each chain on a fresh volume: until GC
    exists (issue 8) a single long chain grows the store and every trial's
    listing and fsck with it."""
    trials = int(os.environ.get("FERRY_TORTURE_SLOW_TRIALS", "40"))
    run_trials(tmp_path, s3_store_url, mode, trials, _seed() + chain * 100_000)
