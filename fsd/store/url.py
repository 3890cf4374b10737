"""Store URL parsing. Pure (no I/O), so a bad URL is refused before anything
is touched, with a message that shows the accepted forms."""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from fsd.store.base import StoreConfigError

FORMS = ("accepted forms: file:///ABSOLUTE/PATH (an existing directory) or "
         "s3://BUCKET[/PREFIX][?endpoint=http(s)://HOST[:PORT]&region=REGION]")
S3_PARAMS = ("endpoint", "region")

# AWS bucket naming rules (the strict, DNS-compatible subset every
# S3-compatible store accepts): 3-63 of a-z 0-9 . -, alphanumeric at both
# ends, no "..", not shaped like an IP address.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_REGION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class StoreSpec:
    """Where a store lives. `scheme` is "file" (uses `path`) or "s3" (uses
    `bucket`, `prefix`, `endpoint`, `region`). A non-empty `prefix` always
    ends with "/" so it can be prepended to keys as is; endpoint and region
    are None when not given (boto3 then uses AWS S3 and its own default)."""

    scheme: str
    path: str = ""
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None

    def to_url(self) -> str:
        """The canonical URL, for messages and for commands the user can paste."""
        if self.scheme == "file":
            return "file://" + quote(self.path, safe="/")
        q = "&".join(f"{k}={v}" for k, v in (("endpoint", self.endpoint), ("region", self.region)) if v)
        path = "/" + quote(self.prefix.rstrip("/"), safe="/") if self.prefix else ""
        return f"s3://{self.bucket}{path}" + (f"?{q}" if q else "")


def _bad(url: str, why: str) -> StoreConfigError:
    return StoreConfigError(f"bad store URL {url!r}: {why}; {FORMS}")


def parse_store_url(url: str) -> StoreSpec:
    """Parse and validate a store URL; raise StoreConfigError if it is not
    one of the accepted forms. Percent-escapes in paths are decoded."""
    try:
        u = urlsplit(url)
    except ValueError as e:
        raise _bad(url, str(e)) from None
    if u.fragment:
        raise _bad(url, "a '#fragment' is not allowed")
    if u.scheme == "file":
        return _parse_file(url, u.netloc, u.path, u.query)
    if u.scheme == "s3":
        return _parse_s3(url, u.netloc, u.path, u.query)
    raise _bad(url, f"unsupported scheme {u.scheme!r}" if u.scheme else "no scheme")


def _parse_file(url: str, netloc: str, path: str, query: str) -> StoreSpec:
    if netloc not in ("", "localhost"):
        raise _bad(url, f"file URLs name a local directory, not host {netloc!r} (use three slashes: file:///PATH)")
    if query:
        raise _bad(url, "file URLs take no '?parameters'")
    path = unquote(path)
    if not path.startswith("/"):
        raise _bad(url, "the directory must be an absolute path")
    if "\0" in path:
        raise _bad(url, "the path contains a NUL byte")
    if len(path) > 1:
        path = path.rstrip("/")
    return StoreSpec("file", path=path)


def _parse_s3(url: str, netloc: str, path: str, query: str) -> StoreSpec:
    if "@" in netloc:
        raise _bad(url, "credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead")
    if ":" in netloc:
        raise _bad(url, "the host part is the bucket name; give the server as ?endpoint=http(s)://HOST:PORT")
    bucket = netloc
    if not _BUCKET_RE.match(bucket) or ".." in bucket or _IP_RE.match(bucket):
        raise _bad(url, f"invalid bucket name {bucket!r} (3-63 characters of a-z 0-9 . -, "
                        f"starting and ending with a letter or digit)")
    prefix = unquote(path).strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise _bad(url, f"invalid prefix {prefix!r}: empty, '.' and '..' components are not allowed")
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _bad(url, f"cannot parse the parameters {query!r}") from None
    for k, v in pairs:
        if k not in S3_PARAMS:
            raise _bad(url, f"unknown parameter {k!r} (known: {', '.join(S3_PARAMS)})")
        if k in params:
            raise _bad(url, f"parameter {k!r} given twice")
        params[k] = v
    endpoint = params.get("endpoint") or None
    if endpoint is not None:
        e = urlsplit(endpoint)
        if e.scheme not in ("http", "https") or not e.netloc or e.path not in ("", "/") or e.query or e.fragment:
            raise _bad(url, f"endpoint {endpoint!r} must look like http(s)://HOST[:PORT]")
        endpoint = endpoint.rstrip("/")
    region = params.get("region") or None
    if region is not None and not _REGION_RE.match(region):
        raise _bad(url, f"invalid region {region!r}")
    return StoreSpec("s3", bucket=bucket, prefix=prefix + "/" if prefix else "", endpoint=endpoint, region=region)
