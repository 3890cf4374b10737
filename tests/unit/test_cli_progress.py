"""Progress off a terminal: a log line at most every period, saying how far."""
from __future__ import annotations

from cli.common import PeriodicLog, byte_progress, progress_reporter


def test_periodic_log_says_how_far_at_most_once_a_period():
    now = [100.0]
    lines: list[str] = []
    p = PeriodicLog("removing v", "objects", period=10.0, clock=lambda: now[0], emit=lines.append)
    p.update(1, 1000)
    now[0] = 109.9
    p.update(50, 1000)
    assert lines == []                          # not yet: nobody needs a line a second
    now[0] = 110.0
    p.update(250, 1000)
    now[0] = 115.0
    p.update(300, 1000)
    now[0] = 121.0
    p.update(1_000, 0)                          # total unknown
    assert lines == ["removing v: 250 of 1,000 objects (25%)", "removing v: 1,000 objects"]
    b: list[str] = []
    q = PeriodicLog("exporting v", "bytes", period=1.0, clock=lambda: now[0], emit=b.append)
    now[0] = 200.0
    q.update(5_500_000, 11_000_000)
    assert b == ["exporting v: 5.5 MB of 11.0 MB (50%)"]


def test_off_a_terminal_the_reporters_log_instead_of_drawing(capsys):
    # pytest captures stderr: not a terminal
    for reporter in (progress_reporter, byte_progress):
        update, stop = reporter("x")
        assert callable(update)
        update(1, 2)
        stop()
