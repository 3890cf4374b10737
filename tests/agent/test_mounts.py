"""agent/volumes.py reference counting of mount IDs and agent/statefile.py persistence."""
from __future__ import annotations

import json

import pytest

from agent.statefile import StateFile
from agent.volumes import Outcome, UnknownMount, Volumes

# (op, volume, id) -> expected Outcome or the exception
STEPS = [
    ("add_id", "v", "a", Outcome(start=True)),
    ("add_id", "v", "a", Outcome(changed=False)),       # same ID twice: idempotent
    ("add_id", "v", "b", Outcome()),
    ("add_id", "w", "a", Outcome(start=True)),          # IDs are per volume
    ("remove_id", "v", "zz", UnknownMount),
    ("remove_id", "v", "a", Outcome()),
    ("remove_id", "v", "a", UnknownMount),              # already gone
    ("remove_id", "v", "b", Outcome(stop=True)),        # last one: stop fsd + release
    ("remove_id", "v", "b", UnknownMount),
    ("remove_id", "nope", "a", UnknownMount),
    ("remove_id", "w", "a", Outcome(stop=True)),
]


def test_refcount_table():
    t = Volumes()
    for op, vol, mid, want in STEPS:
        if isinstance(want, type):
            with pytest.raises(want):
                getattr(t, op)(vol, mid)
        else:
            assert getattr(t, op)(vol, mid) == want, (op, vol, mid)
    assert t.names() == []


def test_unknown_unmount_message():
    t = Volumes()
    t.add_id("v", "a")
    with pytest.raises(UnknownMount, match="other container"):
        t.remove_id("v", "b")
    with pytest.raises(UnknownMount, match="not mounted here"):
        t.remove_id("w", "b")


def test_roundtrip_and_bad_dicts():
    t = Volumes()
    t.add_id("v", "b")
    t.add_id("v", "a")
    t.add_id("w", "c")
    d = t.to_dict()
    assert d == {"volumes": {"v": ["a", "b"], "w": ["c"]}}
    assert Volumes.from_dict(json.loads(json.dumps(d))).to_dict() == d
    for bad in ([], {"volumes": []}, {"volumes": {"v": "a"}}, {"volumes": {"v": [1]}}):
        with pytest.raises(ValueError):
            Volumes.from_dict(bad)


def test_statefile(tmp_path):
    sf = StateFile(tmp_path / "state")
    assert sf.load().to_dict() == {"volumes": {}}
    t = Volumes()
    t.add_id("v", "a")
    sf.save(t)
    assert sf.load().to_dict() == {"volumes": {"v": ["a"]}}
    assert not (tmp_path / "state" / "state.json.tmp").exists()
    (tmp_path / "state" / "state.json").write_text("{garbage")
    assert sf.load().to_dict() == {"volumes": {}}
    assert (tmp_path / "state" / "state.json.bad").exists()
