"""Validation of volume names and options, exactly as the filesystem does it.

Why here and not in leases.py: the rules belong to fsd (`fsd.format.keys`,
`fsd.options`, `fsd.format.superblock`); the control service refuses at
create time what fsd would refuse at mkfs or mount time, with the same
messages, so a bad volume never gets recorded.
"""
from __future__ import annotations

from typing import Any

from fsd.format import keys
from fsd.format.crypto import CIPHERS, KEY_SIZE, NONCE_SIZE, TAG_SIZE, EncryptionInfo, WrappedKey
from fsd.format.superblock import KNOWN_OPTIONS as MKFS_OPTIONS
from fsd.format.superblock import make_superblock, mkfs_options
from fsd.options import KNOWN as MOUNT_OPTIONS
from fsd.options import parse_mount_options

CREATE_OPTIONS = {
    "from": "VOLUME@SNAP, VOLUME@2026-11-29T10:15:00Z, VOLUME@-15m or VOLUME: create the volume as a clone of "
            "that snapshot or moment (metadata only; it shares the origin's data)",
}


def known_volume_options() -> dict[str, str]:
    """Every option `volume create -o` accepts: how it is created, format options (mkfs) and mount options."""
    return {**CREATE_OPTIONS, **MKFS_OPTIONS, **MOUNT_OPTIONS}


def validate_volume_name(name: Any) -> str:
    """ValueError with fsd's message for an unusable name."""
    keys.validate_volume_name(name)
    return name


def _placeholder_encryption(options: dict[str, str]) -> EncryptionInfo | None:
    """Stands in for the key family the agent makes at mkfs (the control service never
    holds keys), so an encrypted volume's options are checked like any other's."""
    cipher = options.get("encryption", "none")
    if cipher not in CIPHERS:
        return None             # "none", or a bad value make_superblock explains
    return EncryptionInfo(cipher, options.get("key", "default"), "0" * 32,
                          (WrappedKey(1, "0" * 16, bytes(NONCE_SIZE), bytes(KEY_SIZE + TAG_SIZE)),))


def validate_volume_options(name: str, options: dict[str, str]) -> dict[str, str]:
    """ValueError naming the bad option (and listing the known ones when unknown)."""
    known = known_volume_options()
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown volume option(s) {', '.join(unknown)}; known: "
                         + "; ".join(f"{k}={v}" for k, v in known.items()))
    mkfs = mkfs_options(options)
    make_superblock(name, mkfs, 0, encryption=_placeholder_encryption(mkfs))
    if "from" in options:
        from fsd.backup.clones import parse_source
        try:
            parse_source(options["from"], 0)
        except ValueError as e:
            raise ValueError(f"from={options['from']}: {e}") from None
        if "block_size" in options:
            raise ValueError("a clone has its origin's block size; drop -o block_size")
    parse_mount_options({k: v for k, v in options.items() if k in MOUNT_OPTIONS})
    return dict(options)
