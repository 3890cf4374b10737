"""The managed plugin's entry point (deploy/plugin/entrypoint.sh) refuses to
start without its required settings and names them; the plugin itself is
tested on a real dockerd in tests/cluster/test_plugin.py."""
from __future__ import annotations

import subprocess
from pathlib import Path

ENTRY = Path(__file__).resolve().parents[2] / "deploy" / "plugin" / "entrypoint.sh"


def test_missing_settings_are_named_and_nothing_starts(tmp_path: Path) -> None:
    r = subprocess.run(["sh", str(ENTRY)], env={"PATH": "/usr/bin:/bin", "STORE": "file:///x"},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert "set CONTROL TOKEN first" in r.stderr and "docker plugin set" in r.stderr, r.stderr
