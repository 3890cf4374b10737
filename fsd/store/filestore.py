"""`file://` store: a directory laid out as an object store.

Writes go to a hidden temp file, are fsynced, then renamed (plain put) or
hard-linked (conditional create: link(2) fails atomically if the name
exists), so readers never see partial objects."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterator

from fsd.store.base import NotFound, PreconditionFailed, StoreConfigError, StoreError

TMP = ".tmp-"


class FileStore:
    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.url = f"file://{root}"
        if not self.root.is_dir():
            raise StoreConfigError(f"store directory {root} does not exist; create it with: mkdir -p {root}")

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(TMP) for p in parts) or "\0" in key:
            raise StoreError(f"invalid object key {key!r}")
        return self.root.joinpath(*parts)

    def _fsync_dir(self, d: Path) -> None:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f"{TMP}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            mv = memoryview(data)
            while mv:
                mv = mv[os.write(fd, mv):]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if if_none_match:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailed(f"{key} already exists") from None
                finally:
                    os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            if tmp.exists():
                tmp.unlink()
            raise
        self._fsync_dir(path.parent)

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                if start is None and end is None:
                    return f.read()
                f.seek(start or 0)
                return f.read(-1 if end is None else max(0, end - (start or 0)))
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(key) from None

    def head(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        # Walk only the directory that contains the prefix; yield in key order.
        base_dir, _, _ = prefix.rpartition("/")
        top = self.root.joinpath(*base_dir.split("/")) if base_dir else self.root
        if not top.is_dir():
            return
        yield from self._walk(top, base_dir + "/" if base_dir else "", prefix, start_after)

    def _walk(self, d: Path, keypfx: str, prefix: str, start_after: str) -> Iterator[str]:
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return
        # Sort so that "a/..." keys order as strings: compare "name/" for dirs.
        items = []
        for n in names:
            if n.startswith(TMP):
                continue
            p = d / n
            items.append((n + "/" if p.is_dir() else n, p))
        items.sort()
        for n, p in items:
            key = keypfx + n
            if n.endswith("/"):
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if start_after and not start_after.startswith(key) and key < start_after:
                    continue
                yield from self._walk(p, key, prefix, start_after)
            elif key.startswith(prefix) and key > start_after:
                yield key

    def close(self) -> None:
        pass
