"""`ferry fs inspect`: what the store says about a volume, plus the live
status of a mount of it on this host (upload lag), if there is one."""
from __future__ import annotations

import json
from pathlib import Path

from fsd import volume as vol_mod
from fsd.store.base import ObjectStore


def _live_status(volume: str) -> dict | None:
    from fsd.mount import run_dir
    d = run_dir() / "mounts"
    if not d.is_dir():
        return None
    for p in d.glob("*.json"):
        try:
            info = json.loads(p.read_text())
            if info.get("volume") == volume:
                return json.loads((Path(info["cache_dir"]) / "status.json").read_text())
        except (OSError, ValueError, KeyError):
            continue
    return None


def inspect_volume(store: ObjectStore, volume: str) -> dict:
    sb = vol_mod.read_superblock(store, volume)
    view = vol_mod.list_journal(store, volume)
    latest = view.latest_epoch
    sealed, gap = vol_mod.epoch_seal(store, volume, latest, view.seqs.get(latest, [])) if latest else (True, 1)
    claim = vol_mod.read_claim(store, volume, latest) if latest else None
    seal_reason = None
    if sealed and gap > 1:
        seal_reason = vol_mod.read_segment(store, volume, latest, gap - 1).reason
    out = {
        "volume": volume,
        "uuid": sb.uuid,
        "format": sb.format,
        "block_size": sb.block_size,
        "compression": sb.compression,
        "fencing": sb.fencing,
        "epoch": latest,
        "owner_host": claim.host if claim else None,
        "sealed": sealed,
        "seal_reason": seal_reason,
        "journal_position": f"{latest}/{gap - 1}",
        "epochs": len(view.epochs),
        "segments": sum(len(v) for v in view.seqs.values()),
        "latest_snapshot": "%d/%d" % view.snapshots[-1] if view.snapshots else None,
    }
    live = _live_status(volume)
    if live:
        out["mounted_on"] = f"{live.get('host')}:{live.get('mountpoint')}"
        out["phase"] = live.get("phase")
        out["durability"] = live.get("durability")
        out["upload_lag_s"] = live.get("upload_lag_s")
        out["dirty_bytes"] = live.get("dirty_bytes")
        out["fenced"] = live.get("fenced")
    return out
