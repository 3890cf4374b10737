"""`ferry fs inspect`: what the store says about a volume, plus the live
status of a mount of it on this host (upload lag), if there is one."""
from __future__ import annotations

import json
import time
from pathlib import Path

from fsd.store.base import ObjectStore
from fsd.volume import objects as vol_mod


def _live_status(volume: str) -> dict | None:
    from fsd.rundir import run_dir
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


def _gc_summary(store: ObjectStore, root: str) -> str | None:
    from fsd.gc.run import read_report
    r = read_report(store, root)
    if r is None:
        return None
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.get("finished_ns", 0) / 1e9))
    n = sum(v.get("objects", 0) for v in (r.get("deleted") or {}).values())
    return (f"{when} on {r.get('host')}: deleted {n} objects, freed {r.get('freed_bytes', 0) / 1e6:.1f} MB"
            + (f" (stopped: {r['error']})" if r.get("error") else ""))


def inspect_volume(store: ObjectStore, volume: str) -> dict:
    ref, sb = vol_mod.locate(store, volume)
    root = ref.root
    view = vol_mod.list_journal(store, root)
    latest = view.latest_epoch
    sealed, gap = vol_mod.epoch_seal(store, root, latest, view.seqs.get(latest, [])) if latest else (True, 1)
    claim = vol_mod.read_claim(store, root, latest) if latest else None
    seal_reason = None
    if sealed and gap > 1:
        seal_reason = vol_mod.read_segment(store, root, latest, gap - 1).reason
    out = {
        "volume": volume,
        "root": root,
        "incarnation": ref.incarnation,
        "removed": bool(claim and claim.purpose == "remove"),
        "uuid": sb.uuid,
        "format": sb.format,
        "layout": (f"block ({sb.block_fs} on a {sb.image_size} byte image)" if sb.layout == "block" else "files"),
        "block_size": sb.block_size,
        "compression": sb.compression,
        "content_hash": sb.content_hash,
        "encryption": (f"{sb.encryption.cipher}, key {sb.encryption.key_name!r} (fingerprint "
                       f"{', '.join(k.kek for k in sb.encryption.keys)})" if sb.encryption else "none"),
        "fencing": sb.fencing,
        "history": f"{sb.history_s:g}s" if sb.history_s else "none (snapshots only)",
        "clone_of": " <- ".join(f"{o.name} at {o.position[0]}/{o.position[1]}" for o in sb.origins) or None,
        "epoch": latest,
        "owner_host": claim.host if claim else None,
        "sealed": sealed,
        "seal_reason": seal_reason,
        "journal_position": f"{latest}/{gap - 1}",
        "epochs": len(view.epochs),
        "segments": sum(len(v) for v in view.seqs.values()),
        "latest_snapshot": "{}/{}".format(*view.snapshots[-1]) if view.snapshots else None,
        "last_gc": _gc_summary(store, root),
    }
    live = _live_status(volume)
    if live:
        out["mounted_on"] = f"{live.get('host')}:{live.get('mountpoint')}"
        out["phase"] = live.get("phase")
        out["durability"] = live.get("durability")
        out["upload_lag_s"] = live.get("upload_lag_s")
        out["dirty_bytes"] = live.get("dirty_bytes")
        out["fenced"] = live.get("fenced")
        if isinstance(live.get("scrub"), dict):
            out["scrub"] = _scrub_summary(live["scrub"])
    return out


def _scrub_summary(sc: dict) -> str:
    """The mount's background scrub in one line (fsd/volume/scrub.py)."""
    if sc.get("running"):
        now = f"pass under way: {sc.get('pass_done', 0)}/{sc.get('pass_total', 0)} objects"
    elif sc.get("last_pass_finished"):
        now = "last pass finished " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sc["last_pass_finished"]))
    else:
        now = "no pass yet"
    damaged = sc.get("damaged_last_pass", 0)
    found = "; ".join(f"{f.get('key')} {f.get('problem')} (inode {f.get('inode')}, block {f.get('block')})"
                      for f in sc.get("findings", [])[-3:])
    return (f"{now}; {sc.get('checked_objects', 0)} objects checked so far"
            + (f"; DAMAGED OR MISSING: {damaged}: {found}" if damaged else "; nothing damaged found"))
