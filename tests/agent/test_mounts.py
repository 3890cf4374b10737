"""agent/mounts.py reference counting and agent/statefile.py persistence."""
from __future__ import annotations

import json

import pytest

from agent.mounts import MountTable, Outcome, UnknownMount
from agent.statefile import StateFile

# (op, volume, id) -> expected Outcome or the exception
STEPS = [
    ("add", "v", "a", Outcome(start=True)),
    ("add", "v", "a", Outcome(changed=False)),       # same ID twice: idempotent
    ("add", "v", "b", Outcome()),
    ("add", "w", "a", Outcome(start=True)),          # IDs are per volume
    ("remove", "v", "zz", UnknownMount),
    ("remove", "v", "a", Outcome()),
    ("remove", "v", "a", UnknownMount),              # already gone
    ("remove", "v", "b", Outcome(stop=True)),        # last one: stop fsd + release
    ("remove", "v", "b", UnknownMount),
    ("remove", "nope", "a", UnknownMount),
    ("remove", "w", "a", Outcome(stop=True)),
]


def test_refcount_table():
    t = MountTable()
    for op, vol, mid, want in STEPS:
        if isinstance(want, type):
            with pytest.raises(want):
                getattr(t, op)(vol, mid)
        else:
            assert getattr(t, op)(vol, mid) == want, (op, vol, mid)
    assert t.names() == []


def test_unknown_unmount_message():
    t = MountTable()
    t.add("v", "a")
    with pytest.raises(UnknownMount, match="other container"):
        t.remove("v", "b")
    with pytest.raises(UnknownMount, match="not mounted here"):
        t.remove("w", "b")


def test_roundtrip_and_bad_dicts():
    t = MountTable()
    t.add("v", "b")
    t.add("v", "a")
    t.add("w", "c")
    d = t.to_dict()
    assert d == {"volumes": {"v": ["a", "b"], "w": ["c"]}}
    assert MountTable.from_dict(json.loads(json.dumps(d))).volumes == t.volumes
    for bad in ([], {"volumes": []}, {"volumes": {"v": "a"}}, {"volumes": {"v": [1]}}):
        with pytest.raises(ValueError):
            MountTable.from_dict(bad)


def test_statefile(tmp_path):
    sf = StateFile(tmp_path / "state")
    assert sf.load().volumes == {}
    t = MountTable()
    t.add("v", "a")
    sf.save(t)
    assert sf.load().volumes == {"v": {"a"}}
    assert not (tmp_path / "state" / "state.json.tmp").exists()
    (tmp_path / "state" / "state.json").write_text("{garbage")
    assert sf.load().volumes == {}
    assert (tmp_path / "state" / "state.json.bad").exists()
