"""The control record: the options a volume was created with at the control
service, kept beside it in the store (`ROOT/control`, docs/format.md).

Why in the store: the control service's state can be lost; the store is
what survives. The superblock keeps only what the filesystem needs (block
size, compression, layout, ...); mount options given at creation
(`durability=local`, cache and GC settings) live only at control. Writing
them here when an agent formats a volume lets `ferry control recover`
(fsd/tools/inventory.py) bring the volume back exactly as it was created instead
of with default mount options. Optional: volumes made before it, or by
`ferry fs mkfs` alone, have none, and recovery then rebuilds the options
from the superblock.

An object of its own, so no existing object's format changes: readers that
do not know it never look at it; removal deletes it with the root.
"""
from __future__ import annotations

from typing import Any

import msgpack

from fsd.format.framing import CorruptObject

FORMAT = "ferry-control-record"
VERSION = 1


def key(root: str) -> str:
    return f"{root}/control"


def encode(options: dict[str, str]) -> bytes:
    data: bytes = msgpack.packb({"format": FORMAT, "v": VERSION, "options": dict(options)}, use_bin_type=True)
    return data


def decode(blob: bytes) -> dict[str, str]:
    """The recorded options; CorruptObject for anything else (a newer version included)."""
    try:
        doc: Any = msgpack.unpackb(blob, raw=False)
    except Exception as e:  # noqa: BLE001 - msgpack raises many kinds
        raise CorruptObject(f"control record is not msgpack: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CorruptObject("not a control record")
    if doc.get("v") != VERSION:
        raise CorruptObject(f"control record version {doc.get('v')!r}; this ferry reads {VERSION}")
    opts = doc.get("options")
    if not isinstance(opts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in opts.items()):
        raise CorruptObject("control record options are not a map of strings")
    return dict(opts)
