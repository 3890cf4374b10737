"""A lean request path for the S3 calls that carry file data.

Whole-object GET and PUT are nearly all of ferry's store traffic by bytes
and by CPU: a sequential write or cold read is one request per block. Going
through a boto3 client costs about 1.5 ms of CPU per 1 MiB request on the CI
machine (event hooks, request and response models, a copy or two of the
body), against about 0.8 ms for the same request sent with urllib3, which
botocore itself uses underneath. Measured with 8 threads against moto: 256
GETs took 0.51 CPU-s through boto3 and 0.31 through this path, 256 PUTs 0.39
and 0.22 (docs/performance.md).

So these two calls are signed with botocore's own SigV4 signer (same
credentials chain, same `UNSIGNED-PAYLOAD` choice as the client) and sent
with a urllib3 pool; everything else (LIST, HEAD, DELETE, ranged GETs, the
bucket check) stays on boto3. Failures are raised as the exceptions
botocore raises (`ClientError` with the S3 error code and status, or a
transport error), so `S3Store._call` retries and maps them exactly as it
does boto3's.

The path is used only where it behaves like the client: not when a proxy
applies to the endpoint (urllib3 does not read the proxy environment; the
store then uses boto3 alone).
"""
from __future__ import annotations

import os
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit
from xml.etree import ElementTree

import botocore.exceptions
import botocore.httpsession
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

# What the store's retry loop treats as "the request may not have arrived".
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError,)


def proxied(url: str) -> bool:
    """Whether the environment sends requests for `url` through a proxy."""
    proxies = urllib.request.getproxies()
    host = urlsplit(url).hostname or ""
    scheme = urlsplit(url).scheme
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


class S3DataPath:
    """GET and PUT of whole objects of one bucket, outside the boto3 client
    but signed and configured like it. Thread-safe (one urllib3 pool)."""

    def __init__(self, client: Any, credentials: Any, bucket: str, region: str, *, connect_timeout: float,
                 read_timeout: float, max_connections: int, path_style: bool) -> None:
        self._config = client.meta.config       # the client's: its s3 options decide payload signing
        self._region = region
        self._creds = credentials               # the session's (refreshing) credentials, or None
        base = client.meta.endpoint_url.rstrip("/")
        if path_style or "." in bucket:
            self._base = f"{base}/{bucket}/"
        else:                            # virtual-hosted, as boto3 addresses AWS buckets
            u = urlsplit(base)
            self._base = f"{u.scheme}://{bucket}.{u.netloc}/"
        ca = os.environ.get("AWS_CA_BUNDLE") or botocore.httpsession.get_cert_path(True)
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=max_connections, block=False, ca_certs=ca,
                                         timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                                         retries=False)

    @property
    def base_url(self) -> str:
        return self._base

    def _headers(self, method: str, url: str, extra: dict[str, str]) -> dict[str, str]:
        if self._creds is None:
            raise botocore.exceptions.NoCredentialsError()
        req = AWSRequest(method=method, url=url, headers=dict(extra))
        req.context["client_config"] = self._config      # payload_signing_enabled=False: UNSIGNED-PAYLOAD
        S3SigV4Auth(self._creds.get_frozen_credentials(), "s3", self._region).add_auth(req)
        return dict(req.headers.items())

    def _url(self, key: str) -> str:
        return self._base + quote(key, safe="/~")

    def get_object(self, key: str) -> bytes:
        """The whole object `key` (the full key, prefix included)."""
        url = self._url(key)
        r = self._pool.request("GET", url, headers=self._headers("GET", url, {}), preload_content=True)
        if r.status != 200:
            raise _client_error(r, "GetObject")
        return r.data

    def put_object(self, key: str, body: bytes, *, if_none_match: bool = False) -> None:
        url = self._url(key)
        extra = {"Content-Length": str(len(body))}
        if if_none_match:
            extra["If-None-Match"] = "*"
        r = self._pool.request("PUT", url, body=body, headers=self._headers("PUT", url, extra))
        if r.status != 200:
            raise _client_error(r, "PutObject")

    def close(self) -> None:
        self._pool.clear()


def _client_error(r: urllib3.BaseHTTPResponse, operation: str) -> botocore.exceptions.ClientError:
    """The ClientError boto3 would raise for this S3 error response."""
    code, message = str(r.status), ""
    try:
        root = ElementTree.fromstring(r.data) if r.data else None
    except ElementTree.ParseError:
        root = None
    if root is not None:
        code = root.findtext("Code") or code
        message = root.findtext("Message") or ""
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message},
         "ResponseMetadata": {"HTTPStatusCode": r.status, "HTTPHeaders": {k.lower(): v for k, v in r.headers.items()}}},
        operation)
