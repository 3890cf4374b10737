"""`file://` store: a directory laid out as an object store (key "a/b/c" is
the file ROOT/a/b/c), for tests, single-host setups and NFS.

Writes go to a hidden temp file in the destination directory, are fsynced,
then renamed into place (plain put) or hard-linked (conditional create:
link(2) fails atomically with EEXIST if the name exists, which gives the
same single-winner guarantee as S3's If-None-Match: *). Readers therefore
never see a partial object. Temp names start with ".tmp-"; keys with such a
component are refused, so `list` can skip them safely. Empty directories
left behind by `delete` are kept: removing them would race with a
concurrent put creating a file inside.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from fsd.store.base import (
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    StoreUnavailable,
)
from fsd.store.url import StoreSpec

log = logging.getLogger("ferry.store")

TMP = ".tmp-"
# Local errors that may clear up by themselves (or by an admin freeing
# space): callers retry these like an unreachable S3 endpoint.
_TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR}


class FileStore:
    """ObjectStore on a local (or NFS) directory.

    A missing directory is created only when the caller says so (`create`):
    the commands that make a volume on purpose (fs mkfs, fs import). Every
    other one refuses, the agent included: a missing directory there is a
    typo or an NFS share that is not mounted, and creating it would hide
    that (the agent would even make empty volumes in it and serve them)."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root)
        self.url = StoreSpec("file", path=str(root)).to_url()
        if not self.root.exists() and create:
            try:
                self.root.mkdir(parents=True, mode=0o700, exist_ok=True)
            except OSError as e:
                raise StoreConfigError(f"cannot create store directory {root}: {e.strerror}") from None
            log.warning("store directory %s did not exist: created it (mode 0700)", root)
        if not self.root.exists():
            raise StoreConfigError(f"store directory {root} does not exist; create it with: mkdir -p {root}")
        if not self.root.is_dir():
            raise StoreConfigError(f"store path {root} is not a directory; point file:// at a directory")

    # ------------------------------------------------------------- helpers
    def _parts(self, key: str) -> list[str]:
        parts = key.split("/")
        if (not key or "\0" in key
                or any(p in ("", ".", "..") or p.startswith(TMP) for p in parts)):
            raise StoreError(f"invalid object key {key!r}: keys are '/'-separated names, without empty, "
                             f"'.', '..' or '{TMP}*' components, not absolute, no NUL")
        return parts

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*self._parts(key))

    def _oserror(self, what: str, e: OSError) -> StoreError:
        """Turn a local error into a store error a user can act on."""
        if isinstance(e, PermissionError):
            return StoreAuthError(f"{what} in {self.root}: permission denied ({e.strerror}); give this user "
                                  f"read/write access to the store directory")
        if e.errno in _TRANSIENT:
            return StoreUnavailable(f"{what} in {self.root} failed: {e.strerror}; check the disk or mount "
                                    f"holding the store directory")
        return StoreError(f"{what} in {self.root} failed: {e}")

    @staticmethod
    def _fsync_dir(d: Path) -> None:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _makedirs(self, d: Path) -> None:
        """mkdir -p, fsyncing the parent of every directory created, so the
        new path survives a power loss along with the object inside it."""
        if d.is_dir():
            return
        missing = []
        p = d
        while not p.is_dir() and p != self.root and p.parent != p:
            missing.append(p)
            p = p.parent
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:
                if not p.is_dir():
                    raise StoreError(f"cannot create {p}: a key of the same name exists "
                                     f"(a key cannot be both an object and a prefix in a file:// store)") from None
                continue
            self._fsync_dir(p.parent)

    # ----------------------------------------------------------- interface
    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        path = self._path(key)
        try:
            for attempt in range(10):
                self._makedirs(path.parent)
                tmp = path.parent / f"{TMP}{secrets.token_hex(8)}"
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    break
                except FileNotFoundError:
                    if attempt == 9:     # a delete pruned the empty directory just now: make it again
                        raise
            try:
                try:
                    mv = memoryview(data)
                    while mv:
                        mv = mv[os.write(fd, mv):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if if_none_match:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        if path.is_dir():
                            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path)) from None
                        raise PreconditionFailed(f"{key} already exists in {self.url}") from None
                else:
                    os.replace(tmp, path)
            finally:
                # gone once renamed into place
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            self._fsync_dir(path.parent)
        except IsADirectoryError:
            raise StoreError(f"cannot write {key}: keys below it exist (a key cannot be both an object "
                             f"and a prefix in a file:// store)") from None
        except NotADirectoryError:
            raise StoreError(f"cannot write {key}: one of its prefixes is an object (a key cannot be both "
                             f"an object and a prefix in a file:// store)") from None
        except OSError as e:
            raise self._oserror(f"PUT {key}", e) from None

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if start is None and end is None:
                    return f.read()
                start = start or 0
                if end is not None and end <= start:
                    return b""
                f.seek(start)
                return f.read(-1 if end is None else end - start)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{key} not found in {self.url}") from None
        except OSError as e:
            raise self._oserror(f"GET {key}", e) from None

    def head(self, key: str) -> int | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._oserror(f"HEAD {key}", e) from None
        return None if stat.S_ISDIR(st.st_mode) else st.st_size

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.delete(key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as e:
            raise self._oserror(f"DELETE {key}", e) from None
        # best effort: a resurrected deleted object is harmless (idempotent delete)
        with contextlib.suppress(OSError):
            self._fsync_dir(path.parent)
        # Prune directories left empty, so a removed volume leaves nothing
        # behind. A put racing with this re-creates its directory (see put).
        for d in path.parents:
            if d == self.root or not str(d).startswith(str(self.root)):
                break
            try:
                d.rmdir()
            except OSError:
                break

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """Keys starting with `prefix` (a plain string prefix) after
        `start_after`, in lexical order. Only the directory holding the
        prefix is walked, and subtrees that cannot match are skipped."""
        base_dir, _, _ = prefix.rpartition("/")
        parts = base_dir.split("/") if base_dir else []
        if any(p in ("", ".", "..") or p.startswith(TMP) or "\0" in p for p in parts):
            return     # no valid key has such a prefix
        top = self.root.joinpath(*parts)
        yield from self._walk(top, base_dir + "/" if base_dir else "", prefix, start_after)

    def _walk(self, d: Path, keypfx: str, prefix: str, start_after: str) -> Iterator[str]:
        try:
            with os.scandir(d) as it:
                # A directory "m" holds keys "m/...": sort it as "m/" so the
                # walk yields full keys in string order ("m-x" < "m/y" < "m0").
                entries = sorted((e.name + "/" if e.is_dir() else e.name, e.name)
                                 for e in it if not e.name.startswith(TMP))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._oserror(f"LIST {prefix}", e) from None
        for sortname, name in entries:
            key = keypfx + sortname
            if sortname.endswith("/"):
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                # Every key below is < start_after unless start_after is below too.
                if key < start_after and not start_after.startswith(key):
                    continue
                yield from self._walk(d / name, key, prefix, start_after)
            elif key.startswith(prefix) and key > start_after:
                yield key

    def list_info(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        for key in self.list(prefix, start_after):
            try:
                st = self._path(key).stat()
            except FileNotFoundError:
                continue            # deleted since it was listed
            except OSError as e:
                raise self._oserror(f"LIST {prefix}", e) from None
            yield ObjectInfo(key, st.st_size, st.st_mtime_ns)

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""
