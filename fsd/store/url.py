"""Store URL parsing (pure)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fsd.store.base import StoreConfigError

FORMS = ("file:///ABSOLUTE/PATH or s3://BUCKET[/PREFIX]?endpoint=URL&region=R")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class StoreSpec:
    scheme: str
    path: str = ""
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None


def parse_store_url(url: str) -> StoreSpec:
    u = urlsplit(url)
    if u.scheme == "file":
        if u.netloc or not u.path.startswith("/") or u.query:
            raise StoreConfigError(f"bad store URL {url!r}: expected {FORMS}")
        return StoreSpec("file", path=u.path)
    if u.scheme == "s3":
        if not _BUCKET_RE.match(u.netloc or ""):
            raise StoreConfigError(f"bad bucket name {u.netloc!r} in {url!r}: 3-63 of a-z 0-9 . -")
        q = parse_qs(u.query, keep_blank_values=True)
        unknown = sorted(set(q) - {"endpoint", "region"})
        if unknown:
            raise StoreConfigError(f"unknown parameter(s) {', '.join(unknown)} in {url!r}; known: endpoint, region")
        one = {k: v[-1] for k, v in q.items()}
        prefix = u.path.strip("/")
        return StoreSpec("s3", bucket=u.netloc, prefix=prefix + "/" if prefix else "",
                         endpoint=one.get("endpoint") or None, region=one.get("region") or None)
    raise StoreConfigError(f"unsupported store URL {url!r}: expected {FORMS}")
