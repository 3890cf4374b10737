"""An object store that seals the objects of encrypted volumes: the one place
where encryption meets the store (fsd/format/crypto.py has the codec).

Every ferry process opens its store once; when it was given keys (a key file
or the agent's key directory: a `KeyRing`), the store is wrapped in a
`SealingStore`. For each volume root it meets, the wrapper reads the root's
superblock (which is never sealed), and if the volume is encrypted it
unwraps the data key with the ring's key of that name, once. From then on
the root's journal segments (seals included), snapshots, pins and data
objects are sealed on `put` and opened on `get`, bound to their key; list,
head and delete pass through (names and sizes are not secret: data objects
are named by a keyed hash). Nothing above the store changes, which is the
point: a forgotten call site cannot write plaintext.

A root whose volume is encrypted and whose key the ring lacks raises
`KeyUnavailable`, which names the key to give. A root without a superblock
yet (mkfs writes it first) or with an unencrypted one passes through.
"""
from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from fsd.format import crypto, keys
from fsd.format.dataobj import HashSpec
from fsd.format.framing import CorruptObject
from fsd.format.superblock import Superblock
from fsd.store.base import NotFound, ObjectInfo, ObjectStore


class KeyUnavailable(crypto.KeyError_):
    """An encrypted volume's key is not in the ring (or not readable)."""


class KeyRing:
    """Key-encryption keys by name: one file for every name (`--key-file`), or
    `<dir>/<name>.key` (the agent's `--key-dir`)."""

    def __init__(self, *, key_file: Path | None = None, key_dir: Path | None = None) -> None:
        if (key_file is None) == (key_dir is None):
            raise ValueError("a key ring has a key file or a key directory")
        self.key_file, self.key_dir = key_file, key_dir

    def path(self, name: str) -> Path:
        if self.key_file is not None:
            return self.key_file
        assert self.key_dir is not None
        keys.validate_volume_name(name)          # a key name is a file name: the same rules
        return self.key_dir / f"{name}.key"

    def get(self, name: str) -> bytes:
        """The KEK called `name`; KeyUnavailable says which file is missing or wrong."""
        p = self.path(name)
        try:
            with open(p, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                data = f.read(4096)
        except OSError as e:
            raise KeyUnavailable(f"key {name!r}: cannot read {p}: {e.strerror}") from None
        if mode & 0o077:
            raise KeyUnavailable(f"key file {p} is readable by other users (mode {mode & 0o777:o}); "
                                 f"chmod 600 {p}")
        return crypto.parse_key_file(data, str(p))


class SealingStore:
    """ObjectStore that seals encrypted volumes' objects (see the module docstring)."""

    def __init__(self, inner: ObjectStore, ring: KeyRing | None,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.inner, self.ring, self.random = inner, ring, random
        self.url = inner.url
        self._ciphers: dict[str, crypto.VolumeCipher | None] = {}
        self._lock = threading.Lock()           # stores are called from several worker threads

    def cipher(self, root: str, *, writing: bool = False) -> crypto.VolumeCipher | None:
        """The root's cipher (None: not encrypted). A root with no superblock (yet, or
        any more) reads as stored; writing under it is refused unless its creator
        `adopt`ed it first, so a volume being created can never get a plaintext object
        by an ordering nobody thought of."""
        with self._lock:
            if root in self._ciphers:
                return self._ciphers[root]
        key = keys.superblock_key(root)
        try:
            sb = Superblock.decode(self.inner.get(key), key)
        except NotFound:
            if writing:
                raise RuntimeError(f"writing under {root} before its superblock exists: the creator must "
                                   f"adopt the root first (fsd.store.sealing.adopt_root)") from None
            return None
        return self.adopt(root, sb)

    def adopt(self, root: str, sb: Superblock) -> crypto.VolumeCipher | None:
        """Seal `root`'s objects as `sb` says, before its superblock is in the store
        (an import writes its data first)."""
        info = sb.encryption
        c: crypto.VolumeCipher | None = None
        if info is not None:
            if self.ring is None:
                raise KeyUnavailable(f"volume {sb.volume!r} is encrypted (key {info.key_name!r}); give its key "
                                     f"with --key-file FILE (the agent: {info.key_name}.key in --key-dir)")
            version, dek = crypto.unwrap(info, self.ring.get(info.key_name), f"volume {sb.volume!r}")
            c = crypto.VolumeCipher(info.cipher, info.family, version, dek, self.random)
        with self._lock:
            self._ciphers[root] = c
        return c

    def _for(self, key: str, writing: bool = False) -> crypto.VolumeCipher | None:
        root = keys.sealed_root(key)
        return None if root is None else self.cipher(root, writing=writing)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        c = self._for(key, writing=True)
        self.inner.put(key, data if c is None else c.seal(key, data), if_none_match=if_none_match)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        c = self._for(key)
        if c is None:
            return self.inner.get(key, start, end)
        plain = c.open(key, self.inner.get(key))
        return plain if start is None and end is None else plain[start or 0:end]

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        return self.inner.list(prefix, start_after)

    def list_info(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list_info(prefix, start_after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_many(self, keys_: builtins.list[str]) -> None:
        self.inner.delete_many(keys_)

    def head(self, key: str) -> int | None:
        return self.inner.head(key)

    def close(self) -> None:
        self.inner.close()


def sealing_store_of(store: ObjectStore) -> SealingStore | None:
    """The SealingStore under `store`'s wrappers (MeteredStore, ...), found by their `inner`."""
    s: object = store
    while not isinstance(s, SealingStore):
        s = getattr(s, "inner", None)
        if s is None:
            return None
    return s


def adopt_root(store: ObjectStore, root: str, sb: Superblock) -> None:
    """Tell the store under `store` how `root` (being created, superblock not written
    yet) seals its objects. Without a SealingStore below, only unencrypted volumes
    can be created."""
    s = sealing_store_of(store)
    if s is not None:
        s.adopt(root, sb)
    elif sb.encryption is not None:
        raise KeyUnavailable(f"volume {sb.volume!r} is encrypted: it needs a store opened with its key")


def new_encryption(store: ObjectStore, options: dict[str, str]) -> crypto.EncryptionInfo | None:
    """A new volume's key family when its mkfs options ask for encryption (None
    otherwise): a fresh data key wrapped by the ring's key `-o key=` (default
    `default`). KeyUnavailable when the store was opened without that key."""
    cipher = options.get("encryption", "none")
    if cipher == "none":
        return None
    if cipher not in crypto.CIPHERS:
        raise ValueError(f"encryption must be {' or '.join(crypto.CIPHERS)}, not {cipher!r}")
    name = options.get("key", "default")
    s = sealing_store_of(store)
    if s is None or s.ring is None:
        raise KeyUnavailable(f"-o encryption={cipher} needs a key: give --key-file FILE (the agent: --key-dir "
                             f"DIR holding {name}.key); make one with: head -c 32 /dev/urandom | base64 > FILE "
                             f"&& chmod 600 FILE")
    info, _dek = crypto.new_encryption(cipher, name, s.ring.get(name), s.random)
    return info


def hash_spec(store: ObjectStore, root: str, sb: Superblock) -> HashSpec:
    """What names and checks `root`'s data blocks: the superblock's hash, or for an
    encrypted volume its keyed hash, which only the store that holds its key can
    give (found through wrappers such as MeteredStore by their `inner`)."""
    if sb.content_hash != crypto.KEYED_HASH:
        return sb.content_hash
    s = sealing_store_of(store)
    if s is None:
        raise KeyUnavailable(f"volume {sb.volume!r} is encrypted: it needs a store opened with its key")
    c = s.cipher(root)
    if c is None:
        raise KeyUnavailable(f"volume {sb.volume!r} is encrypted but its superblock was not found")
    return c.content_hash


__all__ = ["SealingStore", "KeyRing", "KeyUnavailable", "CorruptObject", "hash_spec", "new_encryption",
           "sealing_store_of", "adopt_root"]
