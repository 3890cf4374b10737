"""Encryption at rest (`-o encryption=`, issue 21), on real mounts.

What must hold, and how each test could fail:
* no plaintext byte of a known pattern and no file name reaches any object
  in the store, in both layouts (the same scan finds both in an unencrypted
  volume, so the scan itself works);
* two volumes with the same content share no object name (two unencrypted
  ones do);
* a wrong or missing key is a clear error at mount, naming the key;
* an object swapped for another is detected: the read fails, fsck says so;
* kill -9 then a takeover on a fresh cache, both layouts: every fsynced byte
  is there (the randomized version is tests/test_crash_torture.py's
  `test_crash_torture_encrypted`).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fsd.format import keys
from fsd.store.filestore import FileStore
from tests.helpers.mount import MountError, fsck_clean, run_ferry

PATTERN = b"FERRY-PLAINTEXT-" + os.urandom(8).hex().encode()      # 32 bytes no cipher output contains
NAME = "secret-name-" + os.urandom(4).hex()


@pytest.fixture
def key(tmp_path, monkeypatch) -> Path:
    """The key of the volumes of a test, given to every ferry process through $FERRY_KEY_FILE."""
    k = tmp_path / "volume.key"
    k.write_bytes(os.urandom(32))
    k.chmod(0o600)
    monkeypatch.setenv("FERRY_KEY_FILE", str(k))
    return k


def raw_objects(store_dir: Path) -> dict[str, bytes]:
    """Every object of a file:// store, as stored (read around ferry)."""
    s = FileStore(store_dir)
    return {k: s.get(k) for k in s.list("")}


def leaks(store_dir: Path) -> list[str]:
    """Objects holding the pattern or the file name (in the body or the key)."""
    return [k for k, body in raw_objects(store_dir).items()
            if PATTERN in body or NAME.encode() in body or NAME in k]


def write_fsynced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())


BLOCK = ("layout=block", "fs=ext4", "size=256M")


@pytest.mark.parametrize("layout", ["files", "block"])
def test_no_plaintext_and_no_file_name_reach_the_store(tmp_path, new_mount, key, layout, monkeypatch):
    url = f"file://{tmp_path}/store"
    extra = BLOCK if layout == "block" else ()
    fstype = "ext4" if layout == "block" else "fuse.ferry"
    m = new_mount("a")
    m.mkfs(url, "sealed", ["encryption=aes-256-gcm", *extra])
    m.mount(url, "sealed", fstype=fstype)
    (m.mountpoint / NAME).mkdir()
    write_fsynced(m.mountpoint / NAME / f"{NAME}.txt", PATTERN * 40_000)        # 1.3 MB: several blocks
    write_fsynced(m.mountpoint / "small", PATTERN)                              # inline-sized
    os.setxattr(m.mountpoint / "small", "user.note", PATTERN)
    m.umount()
    assert leaks(tmp_path / "store") == []
    fsck_clean(url, "sealed")

    # The scan finds both in a volume stored in clear: it can fail.
    monkeypatch.delenv("FERRY_KEY_FILE")
    p = new_mount("p")
    p.mkfs(url, "clear", list(extra))
    p.mount(url, "clear", fstype=fstype)
    (p.mountpoint / NAME).mkdir()
    write_fsynced(p.mountpoint / NAME / "f", PATTERN * 40_000)
    p.umount()
    found = leaks(tmp_path / "store")
    assert found and all(k.startswith("clear/") for k in found), found


def test_the_same_content_in_two_volumes_shares_no_object_name(tmp_path, new_mount, key, monkeypatch):
    url = f"file://{tmp_path}/store"
    content = os.urandom(3 << 20)

    def data_names(vol: str, options: list[str]) -> set[str]:
        m = new_mount(vol)
        m.mkfs(url, vol, options)
        m.mount(url, vol)
        write_fsynced(m.mountpoint / "f", content)
        m.umount()
        root = next(k for k in FileStore(tmp_path / "store").list(f"{vol}/") if "/superblock" in k)
        prefix = keys.data_prefix(root.rsplit("/", 1)[0])
        return {k.rsplit("/", 1)[1].split(".")[0] for k in FileStore(tmp_path / "store").list(prefix)}

    a, b = data_names("a", ["encryption=aes-256-gcm"]), data_names("b", ["encryption=chacha20-poly1305"])
    assert len(a) == len(b) == 3 and not a & b
    monkeypatch.delenv("FERRY_KEY_FILE")
    c, d = data_names("c", []), data_names("d", [])
    assert c == d and len(c) == 3           # in clear, equal content has equal names


def test_a_wrong_or_missing_key_is_a_clear_error_at_mount(tmp_path, new_mount, key, monkeypatch):
    url = f"file://{tmp_path}/store"
    m = new_mount("a")
    m.mkfs(url, "v", ["encryption=aes-256-gcm", "key=prod"])
    m.mount(url, "v")
    write_fsynced(m.mountpoint / "f", b"kept")
    m.umount()
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(32))
    wrong.chmod(0o600)
    monkeypatch.setenv("FERRY_KEY_FILE", str(wrong))
    with pytest.raises(MountError, match=r"encrypted with key 'prod' \(fingerprint [0-9a-f]{16}\); the key given"):
        m.mount(url, "v")
    monkeypatch.delenv("FERRY_KEY_FILE")
    with pytest.raises(MountError, match=r"volume 'v' is encrypted \(key 'prod'\); give its key with --key-file"):
        m.mount(url, "v")
    r = run_ferry("fs", "fsck", "--store", url, "v", "--key-file", str(wrong))
    assert r.returncode == 1 and "the key given has fingerprint" in r.stderr and "Traceback" not in r.stderr
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    loose.chmod(0o644)
    r = run_ferry("fs", "fsck", "--store", url, "v", "--key-file", str(loose))
    assert r.returncode == 1 and "chmod 600" in r.stderr, r.stderr
    r = run_ferry("fs", "mkfs", "--store", url, "w", "-o", "encryption=aes-256-gcm")
    assert r.returncode == 1 and "needs a key" in r.stderr and "head -c 32 /dev/urandom" in r.stderr, r.stderr


def test_an_object_swapped_for_another_is_detected(tmp_path, new_mount, key):
    url = f"file://{tmp_path}/store"
    m = new_mount("a")
    m.mkfs(url, "v", ["encryption=aes-256-gcm"])
    m.mount(url, "v")
    first, second = os.urandom(1 << 20), os.urandom(1 << 20)
    write_fsynced(m.mountpoint / "f", first + second)           # two data objects
    m.umount()
    store = FileStore(tmp_path / "store")
    objs = sorted(k for k in store.list("v/") if "/data/" in k)
    assert len(objs) == 2
    store.put(objs[0], store.get(objs[1]))                       # a valid object of the volume, wrong place
    r = run_ferry("fs", "fsck", "--store", url, "v", "--verify-data")
    assert r.returncode == 1 and "fails authentication" in r.stdout, r.stdout + r.stderr
    m2 = new_mount("b")                                          # a fresh cache: the block comes from the store
    m2.mount(url, "v")
    with pytest.raises(OSError) as e, open(m2.mountpoint / "f", "rb") as f:
        f.read()
    assert e.value.errno == 5                                     # EIO, never the other block's bytes
    assert "fails authentication" in m2.log()


@pytest.mark.parametrize("layout", ["files", "block"])
def test_kill9_then_takeover_keeps_every_fsynced_byte(tmp_path, new_mount, key, layout, s3_store_url):
    extra = list(BLOCK) if layout == "block" else []
    fstype = "ext4" if layout == "block" else "fuse.ferry"
    a, b = new_mount("a"), new_mount("b")
    a.mkfs(s3_store_url, "v", ["encryption=chacha20-poly1305", *extra])
    a.mount(s3_store_url, "v", fstype=fstype)
    acked = {f"f{i}": os.urandom(100_000 + i * 50_000) for i in range(5)}
    for name, data in acked.items():
        write_fsynced(a.mountpoint / name, data)
    (a.mountpoint / "unsynced").write_bytes(b"maybe")
    a.kill9()
    b.mount(s3_store_url, "v", takeover=True, fstype=fstype)
    for name, data in acked.items():
        assert (b.mountpoint / name).read_bytes() == data, name
    write_fsynced(b.mountpoint / "after", b"the new owner writes")
    b.umount()
    fsck_clean(s3_store_url, "v")
