"""The scrub's pure part: which objects a pass visits, where it resumes, its pace."""
from __future__ import annotations

from fsd.meta.state import BlockRef
from fsd.volume.scrub import Pacer, ScrubProgress, Target, plan_pass, resume_at


def ref(h: int, epoch: int = 1, src: int = 0) -> BlockRef:
    return BlockRef(hash=bytes([h]) * 32, length=4096, epoch=epoch, src=src)


def test_a_pass_visits_each_distinct_object_once_in_a_stable_order():
    blocks = {5: {0: ref(9), 1: ref(3)}, 2: {7: ref(3), 8: ref(3, epoch=2)}, 1: {0: ref(1, src=1)}}
    plan = plan_pass(blocks)
    assert [(t.src, t.hash[0], t.epoch) for t in plan] == [(0, 3, 1), (0, 3, 2), (0, 9, 1), (1, 1, 1)]
    again = plan_pass(dict(reversed(list(blocks.items()))))    # another dict order: the same objects, same order
    assert [(t.src, t.hash, t.epoch) for t in again] == [(t.src, t.hash, t.epoch) for t in plan]
    t = plan[0]
    assert blocks[t.ino][t.idx] == ref(3)          # names a place that uses it


def test_resume_starts_after_the_last_object_done_even_if_the_plan_changed():
    plan = plan_pass({1: {i: ref(h) for i, h in enumerate((2, 4, 6, 8))}})
    assert resume_at(plan, None) == 0
    assert resume_at(plan, (0, bytes([4]) * 32, 1)) == 2
    assert resume_at(plan, (0, bytes([5]) * 32, 1)) == 2      # that object is gone since: the next one
    assert resume_at(plan, (0, bytes([9]) * 32, 1)) == 4      # past the end: the pass is done


def test_the_pacer_keeps_the_byte_rate_and_saves_no_burst_from_idle_time():
    p = Pacer(rate=1000.0)
    assert p.delay_after(500, now=0.0) == 0.5
    assert p.delay_after(500, now=0.5) == 0.5        # 1000 bytes by t=1.0
    assert p.delay_after(1000, now=100.0) == 1.0     # a long pause does not allow a burst after it


def test_progress_counts_findings_and_resumes_through_its_file_form():
    p = ScrubProgress()
    assert p.due(wall=1000.0, interval=7 * 86400) == 600.0     # never scrubbed: soon, not at mount
    assert p.due(wall=1000.0, interval=1) == 1.0
    p.begin(1000.0, total=2)
    t1, t2 = Target(0, b"\x01" * 32, 1, 5, 0), Target(0, b"\x02" * 32, 1, 5, 1)
    p.checked(t1, 100, None, "k1")
    q = ScrubProgress.from_dict(p.to_dict())                   # saved mid-pass, daemon restarted
    assert q.cursor_key() == (0, b"\x01" * 32, 1) and q.pass_started == 1000.0
    assert q.due(wall=2000.0, interval=3600) == 0.0            # a pass under way resumes at once
    q.begin(2000.0, total=2)                                   # resumes: same pass, cursor kept
    assert q.pass_started == 1000.0 and q.pass_done == 1
    q.checked(t2, 0, "missing", "k2")
    q.finish(2100.0)
    assert (q.passes, q.damaged_total, q.damaged_in_last_pass()) == (1, 1, 1)
    assert q.findings[0]["key"] == "k2" and q.findings[0]["inode"] == 5
    assert q.due(wall=2100.0, interval=3600) == 3600 - 1100    # from the start of the last pass
    q.begin(5000.0, total=2)
    q.checked(t1, 100, None, "k1")
    q.checked(t2, 100, None, "k2")
    q.finish(5001.0)
    assert q.damaged_in_last_pass() == 0 and q.damaged_total == 1
