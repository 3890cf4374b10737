"""Encryption at rest (docs/format.md, "Encrypted volumes"). Pure: bytes in,
bytes out, no I/O; the randomness (nonces, new keys) comes from the caller's
`random` function so tests can pin it.

Keys, from the outside in:

* the **key-encryption key** (KEK): 32 bytes the operator keeps (a key file,
  or one file per key name in the agent's key directory). It never reaches
  the store; the store holds only its fingerprint, so a wrong key is named
  as such instead of failing as "damaged".
* the volume's **data key** (DEK): 32 random bytes made at mkfs, stored in
  the superblock only wrapped (AEAD-encrypted) by the KEK. A clone carries
  its origin's data key (same *key family*), because it reads the origin's
  objects. Rotation re-wraps the DEK under a new KEK: the objects are never
  rewritten (docs/format.md says what rotates and what does not).
* keys **derived** from the DEK with HKDF-SHA256: one that encrypts objects
  (each object under its own key, derived from the object's name, so random
  96-bit nonces are never a worry however many objects a volume writes),
  and one that keys BLAKE3 for content addressing, so equal blocks of two
  volumes (of two key families) get unrelated names and the store's operator
  cannot tell which blocks are equal or guess a block from its name.

An encrypted object is

    "FRYX" | version (1) | cipher id (1) | DEK version (4, big-endian) | nonce (12) | AEAD ciphertext + tag

with the associated data `"ferry-object\\0" | family id | "\\0" | object key`, so an
object moved or copied to another key (or into another family) fails to
open, as does any changed byte.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fsd.format.framing import CorruptObject

MAGIC = b"FRYX"
VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_HEAD = struct.Struct(">4sBBI")      # magic, version, cipher id, DEK version
HEADER_SIZE = _HEAD.size + NONCE_SIZE
CIPHERS = {"aes-256-gcm": 1, "chacha20-poly1305": 2}
_CIPHER_NAMES = {v: k for k, v in CIPHERS.items()}
KEYED_HASH = "blake3-keyed"          # the content hash of encrypted volumes (superblock option `hash`)

Random = Callable[[int], bytes]


class KeyError_(Exception):
    """A key is missing, malformed or not the one the volume needs; the message says which and what to do."""


def _aead(cipher: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    if cipher == "aes-256-gcm":
        return AESGCM(key)
    if cipher == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    raise ValueError(f"unknown cipher {cipher!r}; known: {', '.join(CIPHERS)}")


def _hkdf(secret: bytes, info: bytes, salt: bytes = b"") -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt or None, info=info).derive(secret)


# ------------------------------------------------------------------ the KEK

def parse_key_file(data: bytes, where: str) -> bytes:
    """A KEK from a key file's bytes: exactly 32 raw bytes, or 32 bytes in base64
    or hex text (one line). Anything else is refused with how to make one."""
    make = "make one with: head -c 32 /dev/urandom | base64 > FILE && chmod 600 FILE"
    if len(data) == KEY_SIZE:
        return data
    text = data.strip()
    decoders: tuple[Callable[[bytes], bytes], ...] = (binascii.unhexlify,
                                                      lambda t: base64.b64decode(t, validate=True))
    for decode in decoders:
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == KEY_SIZE:
            return key
    raise KeyError_(f"{where} does not hold a 32-byte key (raw, base64 or hex); {make}")


def fingerprint(kek: bytes) -> str:
    """A KEK's public name in the superblock: 16 hex digits, says nothing of the key."""
    return hmac.new(kek, b"ferry key fingerprint v1", hashlib.sha256).hexdigest()[:16]


# ------------------------------------------------------------------ the DEK in the superblock

@dataclass(frozen=True)
class WrappedKey:
    """The volume's data key, encrypted by one KEK (superblock option `encryption.keys`)."""
    version: int          # of the data key (objects name the version they were sealed with)
    kek: str              # fingerprint of the KEK that wraps it
    nonce: bytes
    ct: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "kek": self.kek, "nonce": self.nonce, "ct": self.ct}

    @classmethod
    def from_dict(cls, d: object, where: str) -> WrappedKey:
        ok = (isinstance(d, dict) and type(d.get("version")) is int and isinstance(d.get("kek"), str)
              and isinstance(d.get("nonce"), bytes) and len(d["nonce"]) == NONCE_SIZE
              and isinstance(d.get("ct"), bytes) and len(d["ct"]) == KEY_SIZE + TAG_SIZE)
        if not ok:
            raise CorruptObject(f"{where}: wrapped data key {d!r} is not {{version, kek, nonce, ct}}")
        assert isinstance(d, dict)
        return cls(d["version"], d["kek"], d["nonce"], d["ct"])


@dataclass(frozen=True)
class EncryptionInfo:
    """What the superblock says about a volume's encryption (option `encryption`)."""
    cipher: str
    key_name: str                  # which KEK the agent's key directory must hold (`<name>.key`)
    family: str                    # 32 hex digits: the data key's identity, shared by clones
    keys: tuple[WrappedKey, ...]   # the data key wrapped by each KEK that may open it

    def to_dict(self) -> dict[str, Any]:
        return {"cipher": self.cipher, "key_name": self.key_name, "family": self.family,
                "keys": [k.to_dict() for k in self.keys]}

    @classmethod
    def from_dict(cls, d: object, where: str) -> EncryptionInfo:
        ok = (isinstance(d, dict) and d.get("cipher") in CIPHERS and isinstance(d.get("key_name"), str)
              and isinstance(d.get("family"), str) and len(d["family"]) == 32 and isinstance(d.get("keys"), list)
              and len(d["keys"]) >= 1)
        if not ok:
            raise CorruptObject(f"{where}: encryption settings {d!r} are not {{cipher, key_name, family, keys}}")
        assert isinstance(d, dict)
        return cls(d["cipher"], d["key_name"], d["family"],
                   tuple(WrappedKey.from_dict(k, where) for k in d["keys"]))


def _wrap_aad(family: str, version: int) -> bytes:
    return b"ferry-data-key\0" + family.encode() + struct.pack(">I", version)


def wrap(kek: bytes, dek: bytes, family: str, version: int, cipher: str, random: Random) -> WrappedKey:
    nonce = random(NONCE_SIZE)
    ct = _aead(cipher, kek).encrypt(nonce, dek, _wrap_aad(family, version))
    return WrappedKey(version, fingerprint(kek), nonce, ct)


def new_encryption(cipher: str, key_name: str, kek: bytes, random: Random) -> tuple[EncryptionInfo, bytes]:
    """A new key family: (what the superblock records, the data key)."""
    if cipher not in CIPHERS:
        raise ValueError(f"encryption must be {' or '.join(CIPHERS)}, not {cipher!r}")
    dek, family = random(KEY_SIZE), random(16).hex()
    return EncryptionInfo(cipher, key_name, family, (wrap(kek, dek, family, 1, cipher, random),)), dek


def unwrap(info: EncryptionInfo, kek: bytes, where: str) -> tuple[int, bytes]:
    """(data key version, data key), or KeyError_ that says whose key is needed."""
    fpr = fingerprint(kek)
    for wk in info.keys:
        if wk.kek != fpr:
            continue
        try:
            return wk.version, _aead(info.cipher, kek).decrypt(wk.nonce, wk.ct, _wrap_aad(info.family, wk.version))
        except InvalidTag:
            raise CorruptObject(f"{where}: the wrapped data key does not open with the key that has its "
                                f"fingerprint {fpr}: the superblock is damaged") from None
    wanted = ", ".join(k.kek for k in info.keys)
    raise KeyError_(f"{where} is encrypted with key {info.key_name!r} (fingerprint {wanted}); the key given has "
                    f"fingerprint {fpr}: give the volume's key (--key-file, or {info.key_name}.key in the "
                    f"agent's --key-dir)")


def rewrap(info: EncryptionInfo, old_kek: bytes, new_kek: bytes, random: Random, where: str,
           key_name: str | None = None) -> EncryptionInfo:
    """The same data key, now wrapped by `new_kek` only (the old KEK no longer opens it)."""
    version, dek = unwrap(info, old_kek, where)
    return EncryptionInfo(info.cipher, key_name or info.key_name, info.family,
                          (wrap(new_kek, dek, info.family, version, info.cipher, random),))


# ------------------------------------------------------------------ objects

class VolumeCipher:
    """Seals and opens one key family's objects, and names its blocks."""

    def __init__(self, cipher: str, family: str, version: int, dek: bytes, random: Random) -> None:
        self.cipher, self.family, self.version, self.random = cipher, family, version, random
        self._cid = CIPHERS[cipher]
        self._enc = _hkdf(dek, b"ferry v1 object encryption")
        self.hash_key = _hkdf(dek, b"ferry v1 content hash")
        self._family = family.encode()

    def _object_key(self, key: str) -> bytes:
        # HKDF-Expand-like single block: HMAC(enc, key); distinct per object name
        return hmac.new(self._enc, b"ferry object key\0" + key.encode(), hashlib.sha256).digest()

    def _aad(self, key: str) -> bytes:
        return b"ferry-object\0" + self._family + b"\0" + key.encode()

    def seal(self, key: str, plain: bytes | bytearray | memoryview) -> bytes:
        nonce = self.random(NONCE_SIZE)
        ct = _aead(self.cipher, self._object_key(key)).encrypt(nonce, bytes(plain), self._aad(key))
        return b"".join((_HEAD.pack(MAGIC, VERSION, self._cid, self.version), nonce, ct))

    def open(self, key: str, data: bytes | bytearray | memoryview) -> bytes:
        """The plaintext, or CorruptObject naming `key` (changed, moved, foreign or truncated)."""
        mv = memoryview(data)
        if len(mv) < HEADER_SIZE + TAG_SIZE:
            raise CorruptObject(f"{key}: truncated encrypted object ({len(mv)} bytes)")
        magic, version, cid, dek_version = _HEAD.unpack_from(mv)
        if magic != MAGIC:
            raise CorruptObject(f"{key}: not an encrypted ferry object (magic {bytes(magic)!r}): a plaintext "
                                f"object in an encrypted volume")
        if version != VERSION:
            raise CorruptObject(f"{key}: encrypted object version {version} is not supported (a newer ferry?)")
        if cid != self._cid or dek_version != self.version:
            raise CorruptObject(f"{key}: sealed with cipher {_CIPHER_NAMES.get(cid, cid)} and data key version "
                                f"{dek_version}, this volume uses {self.cipher} version {self.version}")
        nonce = bytes(mv[_HEAD.size:HEADER_SIZE])
        try:
            return _aead(self.cipher, self._object_key(key)).decrypt(nonce, bytes(mv[HEADER_SIZE:]), self._aad(key))
        except InvalidTag:
            raise CorruptObject(f"{key}: encrypted object fails authentication: changed, damaged, or "
                                f"another object put in its place") from None

    def content_hash(self, raw: bytes | bytearray | memoryview) -> bytes:
        """Keyed BLAKE3: the name of a block in this key family."""
        return blake3.blake3(raw, key=self.hash_key).digest()
