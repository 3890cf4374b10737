"""Waiting for a process we started to listen on a TCP port."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def wait_listening(host: str, port: int, proc: subprocess.Popen, log: Path | None = None,
                   timeout: float = 30) -> None:
    """Return once `host:port` accepts a connection; RuntimeError (with the end of
    `log`) if `proc` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
                raise RuntimeError(f"nothing listens on {host}:{port} "
                                   f"({'exited ' + str(proc.returncode) if proc.poll() is not None else 'timeout'})"
                                   f"\n{tail}") from None
            time.sleep(0.05)
