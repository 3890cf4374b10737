"""fsd/format/crypto.py: keys, wrapping, sealing; each failure is the right error."""
from __future__ import annotations

import base64
import os

import pytest

from fsd.format import crypto as C
from fsd.format.framing import CorruptObject


@pytest.mark.parametrize("cipher", list(C.CIPHERS))
def test_seal_open_round_trip_and_every_kind_of_tampering_is_caught(cipher):
    kek = os.urandom(32)
    info, dek = C.new_encryption(cipher, "prod", kek, os.urandom)
    version, dek2 = C.unwrap(info, kek, "vol")
    assert (version, dek2) == (1, dek)
    vc = C.VolumeCipher(cipher, info.family, version, dek, os.urandom)
    plain = b"secret file name and contents" * 100
    sealed = vc.seal("vol/r/data/aa.01", plain)
    assert plain not in sealed and b"secret" not in sealed
    assert vc.open("vol/r/data/aa.01", sealed) == plain
    assert vc.seal("vol/r/data/aa.01", plain) != sealed                 # fresh nonce each time
    with pytest.raises(CorruptObject, match="another object put in its place"):
        vc.open("vol/r/data/bb.01", sealed)                             # moved to another key
    flipped = bytearray(sealed)
    flipped[-20] ^= 1
    with pytest.raises(CorruptObject, match="fails authentication"):
        vc.open("vol/r/data/aa.01", bytes(flipped))
    other = C.VolumeCipher(cipher, os.urandom(16).hex(), 1, dek, os.urandom)   # another family, same DEK
    with pytest.raises(CorruptObject):
        other.open("vol/r/data/aa.01", sealed)
    with pytest.raises(CorruptObject, match="plaintext object"):
        vc.open("k", b"FRYB" + b"\0" * 64)
    with pytest.raises(CorruptObject, match="truncated"):
        vc.open("k", sealed[:20])


def test_keyed_content_hash_differs_between_families_and_is_stable_within_one():
    a = C.VolumeCipher("aes-256-gcm", "0" * 32, 1, os.urandom(32), os.urandom)
    b = C.VolumeCipher("aes-256-gcm", "1" * 32, 1, os.urandom(32), os.urandom)
    block = os.urandom(4096)
    assert a.content_hash(block) == a.content_hash(block) != b.content_hash(block)
    import blake3
    assert a.content_hash(block) != blake3.blake3(block).digest()


def test_a_wrong_key_is_named_and_a_rewrap_moves_the_data_key_to_the_new_key():
    kek, wrong, new = os.urandom(32), os.urandom(32), os.urandom(32)
    info, dek = C.new_encryption("chacha20-poly1305", "prod", kek, os.urandom)
    with pytest.raises(C.KeyError_, match=r"encrypted with key 'prod'.*prod\.key"):
        C.unwrap(info, wrong, "volume v")
    info2 = C.rewrap(info, kek, new, os.urandom, "volume v")
    assert C.unwrap(info2, new, "v") == (1, dek) and info2.family == info.family
    with pytest.raises(C.KeyError_):
        C.unwrap(info2, kek, "v")                  # the old key no longer opens it
    assert C.EncryptionInfo.from_dict(info2.to_dict(), "sb") == info2
    damaged = info.to_dict()
    damaged["keys"][0]["ct"] = bytes(48)
    with pytest.raises(CorruptObject, match="damaged"):
        C.unwrap(C.EncryptionInfo.from_dict(damaged, "sb"), kek, "v")


def test_key_files_raw_base64_or_hex_and_a_clear_refusal_otherwise():
    k = os.urandom(32)
    assert C.parse_key_file(k, "f") == k
    assert C.parse_key_file(base64.b64encode(k) + b"\n", "f") == k
    assert C.parse_key_file(k.hex().encode() + b"\n", "f") == k
    with pytest.raises(C.KeyError_, match="head -c 32 /dev/urandom"):
        C.parse_key_file(b"too short\n", "f")
    assert C.fingerprint(k) == C.fingerprint(k) and len(C.fingerprint(k)) == 16


def test_an_encrypted_superblock_round_trips_and_bad_option_mixes_are_refused():
    from fsd.format.superblock import ENCRYPTED_FORMAT, Superblock, make_superblock
    kek = os.urandom(32)
    info, _ = C.new_encryption("aes-256-gcm", "prod", kek, os.urandom)
    sb = make_superblock("v", {"encryption": "aes-256-gcm", "key": "prod"}, 1, encryption=info)
    back = Superblock.decode(sb.encode(), "k")
    assert back == sb and back.format == ENCRYPTED_FORMAT and back.encryption == info
    assert back.content_hash == C.KEYED_HASH
    for opts, enc, msg in [({"encryption": "aes-256-gcm"}, None, "needs a key"),
                           ({"encryption": "rot13"}, info, "encryption must be"),
                           ({"encryption": "aes-256-gcm", "hash": "blake3"}, info, "keyed hash"),
                           ({"key": "prod"}, None, "add -o encryption"),
                           ({"encryption": "chacha20-poly1305"}, info, "needs a key")]:
        with pytest.raises(ValueError, match=msg):
            make_superblock("v", opts, 1, encryption=enc)
