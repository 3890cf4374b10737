"""A volume removal checks its own work: what its first listing missed (a
listing racing a concurrent writer or remover) is found by listing again
and deleted, so it never reports an empty root it has not seen."""
from __future__ import annotations

from fsd.format import keys
from fsd.lifecycle import removal
from fsd.store.filestore import FileStore
from fsd.volume import objects as vol_mod


class HidesOnce(FileStore):
    """The first listing of the removal (its data/ and root/ prefixes) misses one object."""

    def __init__(self, root, hidden: str) -> None:
        super().__init__(root)
        self.hidden = hidden
        self.listed = 0
        self.armed = False

    def list_info(self, prefix, start_after=""):
        out = list(super().list_info(prefix, start_after))
        if self.armed and self.hidden.startswith(prefix) and self.listed < 2:   # data/ and root/ listings
            self.listed += 1
            out = [o for o in out if o.key != self.hidden]
        return iter(out)


def test_removal_deletes_what_its_first_listing_missed(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    plain = FileStore(root)
    vol_mod.mkfs(plain, "v", {})
    ref, _ = vol_mod.locate(plain, "v")
    late = keys.data_key(ref.root, b"\x01" * 32, 1)
    plain.put(late, b"x")
    store = HidesOnce(root, late)
    ref = removal.begin_removal(store, "v")
    store.armed = True
    removal.delete_volume(store, ref)
    assert store.listed == 2, "the first listing did hide the object"
    assert list(plain.list(ref.root + "/")) == [], "nothing of the volume is left"
