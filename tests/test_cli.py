"""The CLI as users meet it: exit codes (0 / 1 explained / 2 usage) and messages."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers.mount import run_ferry


@pytest.mark.parametrize("args", [["--help"], ["fs", "--help"], ["fs", "mount", "--help"], ["fs", "mkfs", "--help"]])
def test_help(args):
    r = run_ferry(*args)
    assert r.returncode == 0 and "usage" in r.stdout.lower()


def test_mount_help_teaches_options():
    r = run_ferry("fs", "mount", "--help")
    assert "durability" in r.stdout and "--takeover" in r.stdout


def test_mkfs_help_lists_every_format_option():
    from fsd.format.superblock import KNOWN_OPTIONS
    r = run_ferry("fs", "mkfs", "--help")
    for k in KNOWN_OPTIONS:
        assert f"  {k}: " in r.stdout, k


def test_volume_resize_without_a_size_is_a_usage_error():
    r = run_ferry("volume", "resize", "x")
    assert r.returncode == 2 and "SIZE" in r.stderr


@pytest.mark.parametrize("name", ["..", "a/b", "x" * 129, "bad\x01"])
def test_bad_volume_name_is_a_usage_error(file_store_url, name):
    r = run_ferry("fs", "mkfs", "--store", file_store_url, name)
    assert r.returncode == 2 and "volume name" in r.stderr


def test_missing_arguments_exit_2():
    assert run_ferry("fs", "mkfs").returncode == 2
    assert run_ferry("fs", "frobnicate").returncode == 2


def test_unknown_mount_option_lists_known_ones(file_store_url, tmp_path):
    run_ferry("fs", "mkfs", "--store", file_store_url, "v")
    (tmp_path / "m").mkdir()
    r = run_ferry("fs", "mount", "--store", file_store_url, "--cache-dir", str(tmp_path / "c"), "v",
                  str(tmp_path / "m"), "-o", "turbo=1")
    assert r.returncode == 2 and "unknown mount option" in r.stderr and "durability" in r.stderr


def test_mkfs_twice_and_missing_volume(file_store_url, tmp_path):
    assert run_ferry("fs", "mkfs", "--store", file_store_url, "v").returncode == 0
    r = run_ferry("fs", "mkfs", "--store", file_store_url, "v")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = run_ferry("fs", "fsck", "--store", file_store_url, "nope")
    assert r.returncode == 1 and "ferry fs mkfs" in r.stderr


def test_bad_store_url(tmp_path):
    r = run_ferry("fs", "mkfs", "--store", "ftp://x", "v")
    assert r.returncode == 1 and "s3://" in r.stderr


def test_inspect_after_clean_unmount(file_store_url, new_mount):
    m = new_mount("a")
    m.mkfs(file_store_url, "v")
    m.mount(file_store_url, "v")
    (m.mountpoint / "f").write_bytes(b"x")
    m.umount()
    r = run_ferry("fs", "inspect", "--store", file_store_url, "v", "--json")
    info = json.loads(r.stdout)
    assert info["sealed"] is True and info["seal_reason"] == "release" and info["epoch"] == 2
    assert info["latest_snapshot"] is not None


def test_fsck_verdict_says_what_it_did_not_read_and_verify_data_finds_a_flipped_byte(file_store_url, new_mount):
    from fsd.format import keys
    from fsd.store import open_store
    from fsd.volume.objects import locate
    m = new_mount("a")
    m.mkfs(file_store_url, "v")
    m.mount(file_store_url, "v")
    (m.mountpoint / "f").write_bytes(os.urandom(2 << 20))      # 2 MiB: two different data objects
    m.umount()
    r = run_ferry("fs", "fsck", "--store", file_store_url, "v")
    assert r.returncode == 0 and "NOT read" in r.stdout and "--verify-data" in r.stdout, r.stdout
    r = run_ferry("fs", "fsck", "--store", file_store_url, "v", "--verify-data")
    assert r.returncode == 0 and r.stdout.splitlines()[-1].startswith("clean: ") and "verified" in r.stdout

    store = open_store(file_store_url)
    ref, _ = locate(store, "v")
    key = next(iter(store.list(keys.data_prefix(ref.root))))
    body = bytearray(store.get(key))
    body[len(body) // 2] ^= 0x01
    store.put(key, bytes(body))
    store.close()
    r = run_ferry("fs", "fsck", "--store", file_store_url, "v")
    assert r.returncode == 0 and "NOT read" in r.stdout, r.stdout      # presence only: cannot see it
    r = run_ferry("fs", "fsck", "--store", file_store_url, "v", "--verify-data")
    assert r.returncode == 1 and "1 problem(s)" in r.stdout and "damaged" in r.stdout, r.stdout


def test_mount_from_a_directory_holding_a_cli_package_runs_ferrys_daemon(file_store_url, new_mount, tmp_path):
    """The daemon is `python -m cli`: a `cli` in the user's current directory must not be what runs."""
    decoy = tmp_path / "work"
    (decoy / "cli").mkdir(parents=True)
    (decoy / "cli" / "__init__.py").write_text("")
    (decoy / "cli" / "__main__.py").write_text("import sys; print('decoy ran'); sys.exit(3)\n")
    (decoy / "cli.py").write_text("import sys; sys.exit(4)\n")
    m = new_mount("a")
    m.mkfs(file_store_url, "v")
    m.cache_dir.mkdir(parents=True, exist_ok=True)
    r = run_ferry("fs", "mount", "--store", file_store_url, "--cache-dir", str(m.cache_dir), "v",
                  str(m.mountpoint), cwd=decoy)
    assert r.returncode == 0, r.stdout + r.stderr
    (m.mountpoint / "f").write_bytes(b"served by ferry")
    r = run_ferry("fs", "umount", str(m.mountpoint))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "decoy ran" not in (m.cache_dir / "fsd.log").read_text()


def test_mkfs_creates_a_missing_store_directory_and_fsck_does_not(tmp_path):
    store = tmp_path / "srv" / "ferry-store"
    r = run_ferry("fs", "fsck", "--store", f"file://{store}", "v")
    assert r.returncode == 1 and "does not exist; create it with: mkdir -p" in r.stderr, r.stderr
    assert not store.exists()
    r = run_ferry("fs", "mkfs", "--store", f"file://{store}", "v")
    assert r.returncode == 0 and store.is_dir(), r.stdout + r.stderr
    assert f"store directory {store} did not exist: created it" in r.stderr, r.stderr


def test_a_slow_unmount_off_a_terminal_says_it_is_moving_every_ten_seconds(file_store_url, new_mount):
    """Issue 21: `ferry fs umount` in a service's journal or a pipe prints a full progress
    line when it starts waiting and then every 10 s, not one line rewritten with \\r."""
    m = new_mount("a")
    m.mkfs(file_store_url, "v")
    m.mount(file_store_url, "v", options=["commit_interval=600"],
            extra_env={"FERRY_FAILPOINT_DELAYS": "segment_put=12"})    # the unmount's commit waits 12 s
    (m.mountpoint / "f").write_bytes(os.urandom(4 << 20))
    r = m.umount()
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("committing v")]
    assert len(lines) >= 2 and all(ln.endswith(" s)") for ln in lines) and "\r" not in r.stderr, r.stderr
    assert "failpoint segment_put: pausing 12 s" in m.log()
