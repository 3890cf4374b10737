"""`s3://` store on boto3, for AWS S3 and S3-compatible servers.

Synchronous and thread-safe: one botocore client (clients are thread-safe)
is shared by all worker threads, with a connection pool sized for the
concurrency AsyncStore allows. Retries are ours, not botocore's, so that
every transient failure (throttling, 5xx, dropped connections, timeouts)
gets the same bounded, jittered exponential backoff, and so that the one
ambiguous case, a conditional create whose response was lost, is resolved
correctly (see `put`). Errors are mapped to ferry's store errors with advice.
"""
from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from fsd.store import s3data
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

T = TypeVar("T")

_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken",
         "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem", "InvalidSecurity"}
_RETRY = {"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
          "RequestLimitExceeded", "RequestTimeout", "InternalError", "ServiceUnavailable", "ServerBusy"}
_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
           "301", "InvalidRegion"}
# Transport failures: the request may or may not have reached the server.
_TRANSPORT = (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError,
              botocore.exceptions.IncompleteReadError, OSError, *s3data.TRANSPORT_ERRORS)
_CREDENTIALS = (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError,
                botocore.exceptions.CredentialRetrievalError)


def _code_status(e: botocore.exceptions.ClientError) -> tuple[str, int]:
    code = str(e.response.get("Error", {}).get("Code", ""))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def map_client_error(e: botocore.exceptions.ClientError, what: str, endpoint: str, bucket: str = "") -> StoreError:
    """Translate an S3 error response into a ferry store error.

    StoreUnavailable means "transient, worth retrying". A 409
    ConditionalRequestConflict (a concurrent write to the same key was in
    progress) is reported as PreconditionFailed, like a 412: callers of a
    conditional create already handle that by re-listing and retrying."""
    code, status = _code_status(e)
    b = f"bucket {bucket}" if bucket else "the bucket"
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
        return PreconditionFailed(f"{what}: the key already exists ({code or status})")
    if code == "NoSuchBucket":
        return StoreConfigError(f"{b} does not exist at {endpoint}; create it first ({what})")
    if code in ("NoSuchKey", "404", "NotFound") or status == 404:
        return NotFound(f"{what}: no such key")
    if code in _REGION or status in (301, 307):
        hint = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        fix = (f"add &region={hint} to the store URL" if hint
               else "set &region=... in the store URL to the bucket's region")
        return StoreConfigError(f"{b} at {endpoint} is in another region ({code or status}); {fix}")
    if code == "RequestTimeTooSkewed":
        return StoreAuthError(f"{endpoint} refused the request because this host's clock is off "
                              f"({code}); synchronise the clock (NTP) and try again")
    if code in _AUTH or status == 403:
        return StoreAuthError(f"credentials refused by {endpoint} for {b} ({code or status} on {what}): set "
                              f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to credentials "
                              f"allowed to read and write the bucket")
    if code == "NotImplemented" or status == 501:
        return StoreError(f"{endpoint} does not support {what} ({code or status}); use an S3-compatible "
                          f"store that implements it")
    if code in _RETRY or status >= 500 or status == 429:
        return StoreUnavailable(f"object store at {endpoint} failed {what} ({code or status})")
    return StoreError(f"object store at {endpoint} refused {what}: {code or status}: "
                      f"{e.response.get('Error', {}).get('Message', '')}")


class S3Store:
    """ObjectStore on one bucket (and optional key prefix) of an S3 endpoint.

    `attempts` bounds the tries of every call (first try included); waits
    between tries grow from `base_delay` to at most `max_delay` seconds, with
    jitter. Credentials come from the standard AWS chain (environment,
    profile, instance role)."""

    def __init__(self, spec: StoreSpec, *, attempts: int = 8, base_delay: float = 0.1, max_delay: float = 5.0,
                 connect_timeout: float = 5, read_timeout: float = 60, max_pool_connections: int = 48,
                 data_path: bool = True) -> None:
        if spec.scheme != "s3":
            raise StoreConfigError(f"S3Store needs an s3:// URL, not {spec.to_url()}")
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.spec = spec
        self.bucket = spec.bucket
        self.prefix = spec.prefix
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.url = spec.to_url()
        self.page_size = 1000     # keys per LIST request (the S3 maximum)
        self.endpoint = spec.endpoint or f"AWS S3 ({spec.region or 'default region'})"
        # ferry checksums every object itself (blake2b in the frame, or the
        # content address), so skip botocore's optional per-request checksums:
        # they cost CPU and some S3-compatible servers reject them.
        s3cfg: dict[str, Any] = {"payload_signing_enabled": False}
        if spec.endpoint:
            s3cfg["addressing_style"] = "path"    # most self-hosted servers lack virtual-host DNS
        cfg = botocore.config.Config(
            max_pool_connections=max_pool_connections,
            retries={"total_max_attempts": 1, "mode": "standard"},    # retries are ours (_call)
            connect_timeout=connect_timeout, read_timeout=read_timeout, tcp_keepalive=True, s3=s3cfg,
            request_checksum_calculation="when_required", response_checksum_validation="when_required")
        # A session per store: the default boto3 session is not thread-safe.
        session = boto3.session.Session()
        region = spec.region or "us-east-1"
        self.client = session.client("s3", endpoint_url=spec.endpoint, region_name=region, config=cfg)
        # Whole-object GETs and PUTs (the data) take the lean path (fsd/store/s3data.py).
        self.data: s3data.S3DataPath | None = None
        if data_path and not s3data.proxied(self.client.meta.endpoint_url):
            self.data = s3data.S3DataPath(self.client, session.get_credentials(), self.bucket, region,
                                          connect_timeout=connect_timeout, read_timeout=read_timeout,
                                          max_connections=max_pool_connections, path_style=bool(spec.endpoint))

    # ------------------------------------------------------------- retries
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying transient failures with backoff; raise a mapped
        StoreError when it fails for good or the attempts run out."""
        delay = self.base_delay
        last: StoreUnavailable | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except botocore.exceptions.ClientError as e:
                err = map_client_error(e, what, self.endpoint, self.bucket)
                if not isinstance(err, StoreUnavailable):
                    raise err from None
                last = StoreUnavailable(
                    f"{err} after {attempt} attempt(s); the store is overloaded or down, try again later")
            except _CREDENTIALS as e:
                raise StoreAuthError(f"no usable AWS credentials for {self.endpoint} ({e}): set "
                                     f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE") from None
            except _TRANSPORT as e:
                last = StoreUnavailable(f"cannot reach object store at {self.endpoint} ({what}, {attempt} "
                                        f"attempt(s)): {e}; check the endpoint and the network")
            except botocore.exceptions.BotoCoreError as e:
                raise StoreError(f"{what} on {self.endpoint} failed: {e}") from None
            if attempt < self.attempts:
                time.sleep(delay / 2 + random.uniform(0, delay / 2))
                delay = min(delay * 2, self.max_delay)
        assert last is not None
        raise last

    def check(self) -> None:
        """Cheap reachability check for mkfs/mount (HEAD bucket): fail early,
        with advice, if the bucket is missing or access is refused."""
        try:
            self._call(f"HEAD bucket {self.bucket}", lambda: self.client.head_bucket(Bucket=self.bucket))
        except NotFound:
            raise StoreConfigError(f"bucket {self.bucket} does not exist at {self.endpoint}; "
                                   f"create it first") from None

    # ----------------------------------------------------------- interface
    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        """PUT; with if_none_match, `If-None-Match: *` (create only if absent).

        If an attempt of a conditional create fails in transit (timeout, reset,
        5xx), it may still have been applied; the retry then gets 412 for our
        own write. So after such a failure a 412 is checked by reading the key
        back: identical bytes mean the create was ours. (Every conditionally
        written ferry object is unique to its writer: seals differ from
        segments, claims carry random tokens, data objects are content
        addressed.)"""
        kw: dict[str, Any] = {"IfNoneMatch": "*"} if if_none_match else {}
        uncertain = False

        def go() -> None:
            nonlocal uncertain
            try:
                if self.data is not None:
                    self.data.put_object(self.prefix + key, data, if_none_match=if_none_match)
                else:
                    self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, **kw)
            except botocore.exceptions.ClientError as e:
                if not isinstance(map_client_error(e, "", ""), PreconditionFailed):
                    uncertain = True
                raise
            except Exception:
                uncertain = True
                raise

        try:
            self._call(f"PUT {key}", go)
        except PreconditionFailed:
            if uncertain and if_none_match and self._holds(key, data):
                return
            raise

    def _holds(self, key: str, data: bytes) -> bool:
        try:
            return self.get(key) == data
        except NotFound:
            return False

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Whole object or bytes [start, end); a range past the end is b""."""
        kw: dict[str, Any] = {}
        if start is not None or end is not None:
            lo = start or 0
            if end is not None and end <= lo:
                if self.head(key) is None:      # HTTP cannot ask for an empty range
                    raise NotFound(f"GET {key}: no such key")
                return b""
            kw["Range"] = f"bytes={lo}-" + ("" if end is None else str(end - 1))

        if not kw and self.data is not None:
            data = self.data
            return self._call(f"GET {key}", lambda: data.get_object(self.prefix + key))

        def go() -> bytes:
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, **kw)
            except botocore.exceptions.ClientError as e:
                if _code_status(e)[0] == "InvalidRange" or _code_status(e)[1] == 416:
                    return b""                 # start at or past the end of the object
                raise
            body = r["Body"].read()
            if kw and "ContentRange" not in r:
                body = body[start or 0:end]    # server ignored the Range header
            return body

        return self._call(f"GET {key}", go)

    def head(self, key: str) -> int | None:
        try:
            r = self._call(f"HEAD {key}", lambda: self.client.head_object(Bucket=self.bucket, Key=self.prefix + key))
        except NotFound:
            return None
        return int(r["ContentLength"])

    def delete(self, key: str) -> None:
        self._call(f"DELETE {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key))

    def delete_many(self, keys: list[str]) -> None:
        """DeleteObjects, 1,000 keys per request (quiet: only failures come back)."""
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            objs = [{"Key": self.prefix + k} for k in chunk]
            r = self._call(f"DELETE {len(chunk)} objects from {chunk[0]}", functools.partial(
                self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": objs, "Quiet": True}))
            errors = [e for e in r.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                e = errors[0]
                raise StoreUnavailable(f"DELETE {e.get('Key')} in {self.bucket} failed: {e.get('Code')} "
                                       f"{e.get('Message')} ({len(errors)} of {len(chunk)} keys failed)")

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        """ListObjectsV2 page by page (lazily), each page retried on its own;
        keys are returned relative to the URL's prefix."""
        return (o.key for o in self.list_info(prefix, start_after))

    def list_info(self, prefix: str, start_after: str = "") -> Iterator[ObjectInfo]:
        n = len(self.prefix)
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix, "MaxKeys": self.page_size}
            if token:
                kw["ContinuationToken"] = token
            elif start_after:
                kw["StartAfter"] = self.prefix + start_after
            r = self._call(f"LIST {prefix}", functools.partial(self.client.list_objects_v2, **kw))
            for o in r.get("Contents", []):
                mtime = o.get("LastModified")
                yield ObjectInfo(o["Key"][n:], int(o.get("Size", 0)),
                                 int(mtime.timestamp() * 1e9) if mtime is not None else 0)
            token = r.get("NextContinuationToken")
            if not r.get("IsTruncated") or not token:
                return

    def close(self) -> None:
        if self.data is not None:
            self.data.close()
        self.client.close()
