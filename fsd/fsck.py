"""`ferry fs fsck`: rebuild a volume's metadata from the store exactly as a
mount would, and check it: POSIX tree invariants, every referenced block
present (and, with --verify-data, intact), journal well-formed. Read-only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fsd import volume as vol_mod
from fsd.format import keys
from fsd.format.dataobj import decode_block
from fsd.format.framing import CorruptObject
from fsd.meta.check import check_state, find_orphans
from fsd.store.base import NotFound, ObjectStore


@dataclass
class FsckReport:
    info: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def fsck(store: ObjectStore, volume: str, *, verify_data: bool = False) -> FsckReport:
    rep = FsckReport()
    sb = vol_mod.read_superblock(store, volume)
    try:
        res = vol_mod.load_state(store, volume, sb)
        state, last, replayed = res.state, res.last, res.replayed
    except CorruptObject as e:
        rep.problems.append(f"journal unreadable: {e}")
        return rep
    rep.info.append(f"volume {volume}: format {sb.format}, block size {sb.block_size}, "
                    f"metadata up to segment {last} ({replayed} segments replayed), "
                    f"{len(state.inodes)} inodes")
    rep.problems.extend(check_state(state))
    orphans = find_orphans(state)
    if orphans:
        rep.info.append(f"{len(orphans)} orphan inode(s) (unlinked while open; freed at next mount): "
                        f"{sorted(orphans)[:10]}")
    present = set()
    for k in store.list(keys.data_prefix(volume)):
        h = keys.parse_data_key(volume, k)
        if h is not None:
            present.add(h)
    referenced = 0
    for ino, blocks in sorted(state.blocks.items()):
        for idx, ref in sorted(blocks.items()):
            referenced += 1
            if ref.hash not in present:
                rep.problems.append(f"inode {ino} block {idx}: data object {ref.hash.hex()} is missing")
            elif verify_data:
                key = keys.data_key(volume, ref.hash)
                try:
                    decode_block(store.get(key), ref.hash, key)
                except (CorruptObject, NotFound) as e:
                    rep.problems.append(f"inode {ino} block {idx}: {e}")
    used = {r.hash for b in state.blocks.values() for r in b.values()}
    rep.info.append(f"{referenced} block references, {len(present)} data objects, "
                    f"{len(present - used)} unreferenced (garbage for GC)")
    return rep
