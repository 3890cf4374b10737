"""`s3://` store on boto3. Synchronous and thread-safe (one client shared by
worker threads). Transient failures are retried with jittered exponential
backoff; errors are mapped to ferry's store errors with advice."""
from __future__ import annotations

import random
import time
from typing import Callable, Iterator, TypeVar

import boto3
import botocore.config
import botocore.exceptions

from fsd.store.base import (NotFound, PreconditionFailed, StoreAuthError, StoreConfigError, StoreError,
                            StoreUnavailable)
from fsd.store.url import StoreSpec

T = TypeVar("T")
_AUTH = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken", "InvalidToken"}
_RETRY = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
          "ServiceUnavailable", "RequestTimeTooSkewed"}


def map_client_error(e: botocore.exceptions.ClientError, what: str, endpoint: str) -> StoreError:
    code = e.response.get("Error", {}).get("Code", "")
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412) and code != "BucketAlreadyOwnedByYou":
        return PreconditionFailed(f"{what}: {code or status}")
    if code in ("NoSuchKey", "404", "NotFound") or (status == 404 and code != "NoSuchBucket"):
        return NotFound(what)
    if code == "NoSuchBucket":
        return StoreConfigError(f"bucket does not exist at {endpoint}; create it first ({what})")
    if code in _AUTH or status == 403:
        return StoreAuthError(f"credentials refused by {endpoint} ({code}); set AWS_ACCESS_KEY_ID / "
                              f"AWS_SECRET_ACCESS_KEY or an AWS profile with access to the bucket")
    if code in _RETRY or status >= 500 or status == 429:
        return StoreUnavailable(f"{endpoint}: {code or status} on {what}")
    return StoreError(f"{endpoint}: {code or status} on {what}: {e}")


class S3Store:
    def __init__(self, spec: StoreSpec, *, attempts: int = 8, base_delay: float = 0.1,
                 connect_timeout: float = 5, read_timeout: float = 60) -> None:
        self.spec = spec
        self.prefix = spec.prefix
        self.attempts = attempts
        self.base_delay = base_delay
        q = "&".join(f"{k}={v}" for k, v in (("endpoint", spec.endpoint), ("region", spec.region)) if v)
        self.url = f"s3://{spec.bucket}/{spec.prefix}" + (f"?{q}" if q else "")
        self.endpoint = spec.endpoint or "AWS S3"
        # ferry checksums every object itself (blake2b in the frame or the
        # content address), so skip botocore's extra per-request payload
        # hashing (SigV4 payload signing over http, CRC32 flexible checksums).
        s3cfg: dict = {"payload_signing_enabled": False}
        if spec.endpoint:
            s3cfg["addressing_style"] = "path"
        cfg = botocore.config.Config(max_pool_connections=48, retries={"max_attempts": 1, "mode": "standard"},
                                     connect_timeout=connect_timeout, read_timeout=read_timeout, s3=s3cfg,
                                     request_checksum_calculation="when_supported",
                                     response_checksum_validation="when_required")
        self.client = boto3.session.Session().client("s3", endpoint_url=spec.endpoint,
                                                     region_name=spec.region or "us-east-1", config=cfg)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        delay = self.base_delay
        last: StoreError | None = None
        for attempt in range(self.attempts):
            try:
                return fn()
            except botocore.exceptions.ClientError as e:
                err = map_client_error(e, what, self.endpoint)
                if not isinstance(err, StoreUnavailable):
                    raise err from None
                last = err
            except (botocore.exceptions.HTTPClientError, botocore.exceptions.ConnectionError,
                    botocore.exceptions.ResponseStreamingError, botocore.exceptions.IncompleteReadError,
                    OSError) as e:
                last = StoreUnavailable(f"cannot reach object store at {self.endpoint}: {e}; "
                                        f"check the endpoint and the network")
            except botocore.exceptions.NoCredentialsError:
                raise StoreAuthError("no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY, or configure an AWS profile") from None
            if attempt + 1 < self.attempts:
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
        assert last is not None
        raise last

    def check(self) -> None:
        """Fail early, with advice, if the bucket is missing or access is refused."""
        try:
            self._call(f"bucket {self.spec.bucket}", lambda: self.client.head_bucket(Bucket=self.spec.bucket))
        except NotFound:
            raise StoreConfigError(f"bucket {self.spec.bucket} does not exist at {self.endpoint}; "
                                   f"create it first") from None

    def put(self, key: str, data: bytes, *, if_none_match: bool = False) -> None:
        kw = {"IfNoneMatch": "*"} if if_none_match else {}
        self._call(f"PUT {key}", lambda: self.client.put_object(
            Bucket=self.spec.bucket, Key=self.prefix + key, Body=data, **kw))

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        kw = {}
        if start is not None or end is not None:
            if end is not None and end <= (start or 0):
                return b""
            kw["Range"] = f"bytes={start or 0}-" + ("" if end is None else str(end - 1))

        def go() -> bytes:
            return self.client.get_object(Bucket=self.spec.bucket, Key=self.prefix + key, **kw)["Body"].read()
        try:
            return self._call(f"GET {key}", go)
        except StoreError as e:
            if "InvalidRange" in str(e):
                return b""
            raise

    def head(self, key: str) -> int | None:
        try:
            r = self._call(f"HEAD {key}", lambda: self.client.head_object(Bucket=self.spec.bucket,
                                                                         Key=self.prefix + key))
            return int(r["ContentLength"])
        except NotFound:
            return None

    def delete(self, key: str) -> None:
        self._call(f"DELETE {key}", lambda: self.client.delete_object(Bucket=self.spec.bucket,
                                                                     Key=self.prefix + key))

    def list(self, prefix: str, start_after: str = "") -> Iterator[str]:
        token = None
        n = len(self.prefix)
        while True:
            kw = {"Bucket": self.spec.bucket, "Prefix": self.prefix + prefix, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            elif start_after:
                kw["StartAfter"] = self.prefix + start_after
            r = self._call(f"LIST {prefix}", lambda: self.client.list_objects_v2(**kw))
            for o in r.get("Contents", []):
                yield o["Key"][n:]
            if not r.get("IsTruncated"):
                return
            token = r.get("NextContinuationToken")

    def close(self) -> None:
        self.client.close()
