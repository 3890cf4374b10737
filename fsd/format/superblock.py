"""Volume superblock (magic FRYB): the parameters fixed at mkfs.

Every mount trusts these values to lay out and decode data, so `decode`
re-checks them (a superblock with an impossible block size is corruption,
not a configuration to run with) and `make_superblock` refuses bad `-o`
options before anything is written.
"""
from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from fsd.format.crypto import CIPHERS, KEYED_HASH, EncryptionInfo
from fsd.format.framing import CorruptObject, frame, require, unframe
from fsd.format.keys import validate_volume_name
from fsd.options import parse_duration, parse_size

__all__ = ["Origin", "Superblock", "make_superblock", "parse_size", "MAGIC", "FORMAT",
           "MIN_BLOCK_SIZE", "MAX_BLOCK_SIZE", "DEFAULT_BLOCK_SIZE", "COMPRESSIONS", "FENCING_MODES"]

MAGIC = b"FRYB"
FORMAT = 3            # 2 + origins (clones share their origin's data objects)
BLOCK_FORMAT = 4      # 3 + options layout, fs, image_size (layout=block)
HASH_FORMAT = 5       # 4 + option hash: what mkfs writes unless -o hash=blake2b
ENCRYPTED_FORMAT = 6  # 5 + option encryption (wrapped data key), hash blake3-keyed, sealed objects
FORMATS = (1, 2, 3, 4, 5, 6)  # what this ferry reads (docs/format.md, "Versions")
HASHES = ("blake3", "blake2b")      # fsd/format/dataobj.py; the first is the default
MIN_BLOCK_SIZE = 64 << 10
MAX_BLOCK_SIZE = 16 << 20
DEFAULT_BLOCK_SIZE = 1 << 20
COMPRESSIONS = ("none", "zstd")
FENCING_MODES = ("conditional", "timing")
DEFAULT_HISTORY = "1h"
LAYOUTS = ("files", "block")
DEFAULT_IMAGE_SIZE = "10G"
MIN_IMAGE_SIZE = 64 << 20
MAX_IMAGE_SIZE = 1 << 50
KNOWN_OPTIONS = {
    "block_size": "64k..16M, a power of two (default 1M)",
    "compression": "none|zstd (default none)",
    "history": f"how far back the volume can be restored to any commit (default {DEFAULT_HISTORY}; 0: snapshots "
               "only); GC keeps what that needs",
    "layout": "files|block (default files: ferry is the filesystem; block: a kernel filesystem on a "
              "sparse image in ferry, for small-file speed; docs/block.md)",
    "fs": "ext4|xfs, the kernel filesystem of a layout=block volume (default ext4)",
    "size": f"the image size of a layout=block volume, sparse (default {DEFAULT_IMAGE_SIZE})",
    "hash": "blake3|blake2b, the content hash of data blocks (default blake3; blake2b volumes stay readable "
            "by ferry releases before volume format 5)",
    "encryption": "aes-256-gcm|chacha20-poly1305: encrypt and authenticate every object at rest (default none; "
                  "needs a key: --key-file, or the agent's --key-dir; docs/encryption.md)",
    "key": "the name of the key that wraps the volume's data key: the agent reads <key-dir>/<key>.key "
           "(default: default)",
}
_UUID_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Origin:
    """A volume whose data objects a clone shares (format 3).

    `root`: where those objects are; `position`: the origin's metadata
    snapshot the clone was made from; `pin`: the key of the pin in the
    origin that keeps that snapshot and its objects alive while the clone
    exists (deleted when the clone is removed). A clone's BLOCK record with
    `src` k points under `origins[k-1].root`."""

    name: str
    root: str
    position: tuple[int, int]
    pin: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "root": self.root, "position": list(self.position), "pin": self.pin}

    @classmethod
    def from_dict(cls, d: object, key: str) -> Origin:
        ok = (isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("root"), str)
              and isinstance(d.get("pin"), str) and isinstance(d.get("position"), list)
              and len(d["position"]) == 2 and all(type(x) is int and x >= 0 for x in d["position"]))
        if not ok:
            raise CorruptObject(f"{key}: origin {d!r} is not {{name, root, position: [epoch, seq], pin}}")
        assert isinstance(d, dict)
        return cls(d["name"], d["root"], (d["position"][0], d["position"][1]), d["pin"])


@dataclass
class Superblock:
    volume: str
    uuid: str
    format: int
    block_size: int
    compression: str
    created_ns: int
    fencing: str = "conditional"
    options: dict[str, Any] = field(default_factory=dict)
    origins: tuple[Origin, ...] = ()

    def encode(self) -> bytes:
        d = asdict(self)
        d["origins"] = [o.to_dict() for o in self.origins]
        return frame(MAGIC, d)

    @property
    def history_s(self) -> float:
        """The history window in seconds (format 3 option; older volumes keep none)."""
        v = self.options.get("history", 0)
        return float(v) if isinstance(v, (int, float)) else 0.0

    @property
    def layout(self) -> str:
        """'files' (ferry is the filesystem) or 'block' (a kernel filesystem on ferry's `image`)."""
        return "block" if self.options.get("layout") == "block" else "files"

    @property
    def content_hash(self) -> str:
        """The hash that names and checks data blocks: BLAKE2b before format 5."""
        return str(self.options.get("hash", "blake2b"))

    @property
    def encryption(self) -> EncryptionInfo | None:
        """How the volume's objects are sealed (format 6), or None: stored in clear."""
        e = self.options.get("encryption")
        return None if e is None else EncryptionInfo.from_dict(e, f"volume {self.volume!r}'s superblock")

    @property
    def block_fs(self) -> str:
        return str(self.options.get("fs", "ext4"))

    @property
    def image_size(self) -> int:
        v = self.options.get("image_size", 0)
        return v if isinstance(v, int) else 0

    def data_roots(self, root: str) -> list[str]:
        """Where BLOCK records' objects are, by `src`: the volume's own root, then its origins'."""
        return [root, *(o.root for o in self.origins)]

    @classmethod
    def decode(cls, data: bytes, key: str) -> Superblock:
        b = require(unframe(MAGIC, data, key), key, {
            "volume": str, "uuid": str, "format": int, "block_size": int, "compression": str,
            "created_ns": int, "fencing": str, "options": dict})
        if b["format"] not in FORMATS:
            raise CorruptObject(f"{key}: volume format {b['format']} is not supported "
                                f"(this ferry reads formats {', '.join(map(str, FORMATS))}; written by a newer ferry?)")
        if not valid_block_size(b["block_size"]):
            raise CorruptObject(f"{key}: block_size {b['block_size']} is not a power of two "
                                f"between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}")
        if b["compression"] not in COMPRESSIONS:
            raise CorruptObject(f"{key}: unknown compression {b['compression']!r}")
        if b["fencing"] not in FENCING_MODES:
            raise CorruptObject(f"{key}: unknown fencing mode {b['fencing']!r}")
        if not _UUID_RE.fullmatch(b["uuid"]):
            raise CorruptObject(f"{key}: uuid {b['uuid']!r} is not 32 lower-case hex digits")
        raw_origins = b.get("origins", [])
        if not isinstance(raw_origins, list):
            raise CorruptObject(f"{key}: origins is not a list")
        origins = tuple(Origin.from_dict(o, key) for o in raw_origins)
        opts = b["options"]
        if "encryption" in opts:
            if b["format"] < ENCRYPTED_FORMAT or opts.get("hash") != KEYED_HASH:
                raise CorruptObject(f"{key}: encryption needs format {ENCRYPTED_FORMAT} and hash {KEYED_HASH}")
            EncryptionInfo.from_dict(opts["encryption"], key)
        elif opts.get("hash", "blake2b") not in HASHES or ("hash" in opts and b["format"] < HASH_FORMAT):
            raise CorruptObject(f"{key}: unknown content hash {opts.get('hash')!r} for format {b['format']}")
        if opts.get("layout", "files") not in LAYOUTS:
            raise CorruptObject(f"{key}: unknown layout {opts.get('layout')!r}")
        if opts.get("layout") == "block" and (opts.get("fs") not in ("ext4", "xfs")
                                               or type(opts.get("image_size")) is not int
                                               or not MIN_IMAGE_SIZE <= opts["image_size"] <= MAX_IMAGE_SIZE):
            raise CorruptObject(f"{key}: block layout with fs {opts.get('fs')!r} and image_size "
                                f"{opts.get('image_size')!r} is not usable")
        return cls(**{k: b[k] for k in cls.__dataclass_fields__ if k != "origins"}, origins=origins)


def mkfs_options(options: dict[str, str]) -> dict[str, str]:
    """The format options among a volume's options (Docker's `-o` mixes them
    with mount options). `size` is the volume's size in both layouts: the
    image size of a block volume (a format option), the df limit of a files
    volume (a mount option)."""
    block = options.get("layout") == "block"
    return {k: v for k, v in options.items() if k in KNOWN_OPTIONS and (k != "size" or block)}


def valid_block_size(n: int) -> bool:
    return MIN_BLOCK_SIZE <= n <= MAX_BLOCK_SIZE and n & (n - 1) == 0


def make_superblock(volume: str, options: dict[str, str], now_ns: int,
                    encryption: EncryptionInfo | None = None) -> Superblock:
    """A new volume's superblock from mkfs `-o` options; ValueError explains
    any unusable volume name or option (listing the known options). With
    `-o encryption=`, the caller made the key family (`encryption`: it holds
    the key, this module never does)."""
    validate_volume_name(volume)
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise ValueError(f"unknown volume option(s) {', '.join(unknown)}; known: "
                         + "; ".join(f"{k}={v}" for k, v in KNOWN_OPTIONS.items()))
    text = options.get("block_size")
    bs = DEFAULT_BLOCK_SIZE
    if text is not None:
        try:
            bs = parse_size(text)
        except ValueError as e:
            raise ValueError(f"block_size: {e}") from None
        if not valid_block_size(bs):
            raise ValueError(f"block_size must be a power of two between 64k and 16M, not {text!r}")
    comp = options.get("compression", "none")
    if comp not in COMPRESSIONS:
        raise ValueError(f"compression must be 'none' or 'zstd', not {comp!r}")
    try:
        history = parse_duration(options.get("history", DEFAULT_HISTORY))
    except ValueError as e:
        raise ValueError(f"history: {e}") from None
    if not 0 <= history <= 366 * 86400:
        raise ValueError("history must be between 0 and 366d")
    algo = options.get("hash", HASHES[0])
    if algo not in HASHES:
        raise ValueError(f"hash must be {' or '.join(repr(h) for h in HASHES)}, not {algo!r}")
    vol_opts: dict[str, object] = {"history": history}
    vol_opts.update(_layout_options(options))
    fmt = BLOCK_FORMAT if vol_opts.get("layout") == "block" else FORMAT
    if algo != "blake2b":       # BLAKE2b volumes keep the format older releases read
        vol_opts["hash"] = algo
        fmt = HASH_FORMAT
    cipher = options.get("encryption", "none")
    if cipher != "none":
        if cipher not in CIPHERS:
            raise ValueError(f"encryption must be {' or '.join(CIPHERS)}, not {cipher!r}")
        if "hash" in options:
            raise ValueError("an encrypted volume names its blocks by a keyed hash; leave out -o hash=")
        try:
            validate_volume_name(options.get("key", "default"))
        except ValueError as e:
            raise ValueError(f"key: a key name is a file name in the agent's key directory: {e}") from None
        if encryption is None or encryption.cipher != cipher:
            raise ValueError(f"-o encryption={cipher} needs a key (--key-file FILE, or the agent's --key-dir)")
        vol_opts["hash"], vol_opts["encryption"] = KEYED_HASH, encryption.to_dict()
        fmt = ENCRYPTED_FORMAT
    elif "key" in options:
        raise ValueError("-o key= names the key of an encrypted volume: add -o encryption=aes-256-gcm")
    return Superblock(volume=volume, uuid=secrets.token_hex(16), format=fmt, block_size=bs,
                      compression=comp, created_ns=now_ns, options=vol_opts)


def _layout_options(options: dict[str, str]) -> dict[str, object]:
    """`layout`, `fs`, `size` -> superblock options; ValueError says what is wrong.
    Only block volumes record them (a files volume stays format 3)."""
    layout = options.get("layout", "files")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'files' or 'block', not {layout!r}")
    if layout == "files":
        if "fs" in options:
            raise ValueError("fs applies only to layout=block volumes (add -o layout=block)")
        if "size" in options:
            raise ValueError("a layout=files volume's size is a mount option (ferry fs mount -o size=); "
                             "at mkfs, size is the image size of a layout=block volume")
        return {}
    fs = options.get("fs", "ext4")
    if fs not in ("ext4", "xfs"):
        raise ValueError(f"fs must be 'ext4' or 'xfs', not {fs!r}")
    try:
        size = parse_size(options.get("size", DEFAULT_IMAGE_SIZE))
    except ValueError as e:
        raise ValueError(f"size: {e}") from None
    size -= size % 4096
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"size must be between 64M and 1P, not {options['size']!r}")
    if fs == "xfs" and size < 300 << 20:
        raise ValueError("size must be at least 300M for xfs (mkfs.xfs refuses smaller filesystems)")
    return {"layout": "block", "fs": fs, "image_size": size}
