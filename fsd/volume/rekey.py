"""Key rotation for an encrypted volume: its data key, unwrapped with the key
that guards it now, is wrapped with a new one and the superblock rewritten.

What rotates: the key-encryption key (the operator's key file). What does
not: the data key and every object sealed with it (rewriting a volume's
objects would cost a full copy, and a clone shares them). So rotation
protects against a leaked key file as long as the store's copy of the old
wrapped key is gone, not against a leaked data key (docs/encryption.md).

The superblock is the one object ferry ever overwrites, and only here: a
plain PUT, atomic on every store ferry supports; the previous version is
read back first, so a concurrent rekey or a changed volume is refused.
"""
from __future__ import annotations

import os

from fsd.format import crypto, keys
from fsd.format.superblock import Superblock
from fsd.store.base import ObjectStore
from fsd.store.sealing import sealing_store_of
from fsd.volume.objects import VolumeError, locate


def rekey(store: ObjectStore, volume: str, new_kek: bytes, new_name: str | None = None) -> crypto.EncryptionInfo:
    """Wrap `volume`'s data key with `new_kek` (named `new_name`, else its current name)."""
    ref, sb = locate(store, volume)          # checks the current key
    info = sb.encryption
    if info is None:
        raise VolumeError(f"volume {volume!r} is not encrypted: there is no key to rotate")
    s = sealing_store_of(store)
    assert s is not None and s.ring is not None      # locate opened the key through it
    old_kek = s.ring.get(info.key_name)
    if crypto.fingerprint(new_kek) == crypto.fingerprint(old_kek):
        raise VolumeError("the new key is the key the volume has now")
    new_info = crypto.rewrap(info, old_kek, new_kek, os.urandom, f"volume {volume!r}", key_name=new_name)
    key = keys.superblock_key(ref.root)
    current = store.get(key)
    if Superblock.decode(current, key) != sb:
        raise VolumeError(f"volume {volume!r}'s superblock changed while rekeying; run it again")
    sb.options["encryption"] = new_info.to_dict()
    store.put(key, sb.encode())
    return new_info
