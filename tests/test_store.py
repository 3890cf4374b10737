"""Both stores against the same contract: real directory, real S3 wire protocol."""
from __future__ import annotations

import threading
import time

import pytest
import trio

from fsd.store import open_store
from fsd.store.aio import AsyncStore
from fsd.store.base import NotFound, PreconditionFailed, StoreConfigError, StoreError, StoreUnavailable
from fsd.store.probe import probe_conditional_writes
from fsd.store.s3store import S3Store
from fsd.store.url import parse_store_url


def test_put_get_range_head_delete(store):
    store.put("v/a/b", b"0123456789")
    assert store.get("v/a/b") == b"0123456789"
    assert store.get("v/a/b", 2, 5) == b"234"
    assert store.get("v/a/b", 7) == b"789"
    assert store.head("v/a/b") == 10
    store.put("v/a/b", b"new")
    assert store.get("v/a/b") == b"new"
    store.delete("v/a/b")
    store.delete("v/a/b")        # idempotent
    assert store.head("v/a/b") is None
    with pytest.raises(NotFound):
        store.get("v/a/b")


def test_list_order_prefix_start_after(store):
    keys = ["v/journal/0000000000000001/0000000000000002", "v/journal/0000000000000001/0000000000000001",
            "v/journal/0000000000000002/0000000000000001", "v/epochs/0000000000000001", "w/x", "v/journalx"]
    for k in keys:
        store.put(k, b"x")
    assert list(store.list("v/journal/")) == sorted(k for k in keys if k.startswith("v/journal/"))
    assert list(store.list("v/journal")) == sorted(k for k in keys if k.startswith("v/journal"))
    assert list(store.list("v/journal/", start_after="v/journal/0000000000000001/0000000000000001")) == [
        "v/journal/0000000000000001/0000000000000002", "v/journal/0000000000000002/0000000000000001"]
    assert list(store.list("nothing/")) == []


def test_conditional_create_exactly_one_winner(store):
    wins, losses = [], []

    def attempt(i: int) -> None:
        try:
            store.put("race/key", f"writer {i}".encode(), if_none_match=True)
            wins.append(i)
        except PreconditionFailed:
            losses.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert store.get("race/key") == f"writer {wins[0]}".encode()


def test_probe_detects_conditional_writes(store):
    assert probe_conditional_writes(store)
    assert list(store.list("_probe/")) == []


@pytest.mark.parametrize("key", ["", "a//b", "../x", "a/./b", "a/.tmp-x"])
def test_file_store_rejects_bad_keys(file_store_url, key):
    s = open_store(file_store_url)
    with pytest.raises(StoreError):
        s.put(key, b"x")


def test_file_store_missing_directory_says_what_to_do(tmp_path):
    with pytest.raises(StoreConfigError, match="mkdir -p"):
        open_store(f"file://{tmp_path}/nope")


def test_s3_missing_bucket(moto_endpoint):
    with pytest.raises(StoreConfigError, match="does not exist"):
        open_store(f"s3://no-such-bucket-here?endpoint={moto_endpoint}&region=us-east-1")


def test_s3_unreachable_endpoint_is_unavailable_quickly():
    from tests.conftest import free_port
    spec = parse_store_url(f"s3://bucket?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1")
    s = S3Store(spec, attempts=3, base_delay=0.01, connect_timeout=1)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        s.get("x")
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("url", ["http://x", "file://relative", "s3://UPPER", "s3://bucket?bogus=1", "file:///a?b=c"])
def test_bad_urls_are_refused_clearly(url):
    with pytest.raises(StoreConfigError):
        parse_store_url(url)


def test_s3_prefix_is_transparent(moto_endpoint):
    from tests.conftest import make_bucket
    b = make_bucket(moto_endpoint)
    s = open_store(f"s3://{b}/some/prefix?endpoint={moto_endpoint}")
    s.put("v/k", b"1")
    assert list(s.list("v/")) == ["v/k"]
    raw = open_store(f"s3://{b}?endpoint={moto_endpoint}")
    assert list(raw.list("")) == ["some/prefix/v/k"]


async def test_async_store_runs_in_threads(store):
    a = AsyncStore(store, limit=4)
    async with trio.open_nursery() as n:
        for i in range(10):
            n.start_soon(a.put, f"k/{i}", b"x" * i)
    assert await a.list("k/") == sorted(f"k/{i}" for i in range(10))
    assert await a.get("k/5") == b"xxxxx"


@pytest.mark.parametrize("code,status,exc", [
    ("InvalidAccessKeyId", 403, "StoreAuthError"), ("SignatureDoesNotMatch", 403, "StoreAuthError"),
    ("AccessDenied", 403, "StoreAuthError"), ("NoSuchBucket", 404, "StoreConfigError"),
    ("NoSuchKey", 404, "NotFound"), ("PreconditionFailed", 412, "PreconditionFailed"),
    ("ConditionalRequestConflict", 409, "PreconditionFailed"), ("SlowDown", 503, "StoreUnavailable"),
    ("InternalError", 500, "StoreUnavailable"),
])
def test_s3_error_mapping(code, status, exc):
    """moto accepts any credentials, so the mapping of refusals is checked on
    the botocore errors S3 returns."""
    import botocore.exceptions
    from fsd.store.s3store import map_client_error
    err = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")
    mapped = map_client_error(err, "PUT k", "http://e")
    assert type(mapped).__name__ == exc
    if exc == "StoreAuthError":
        assert "AWS_ACCESS_KEY_ID" in str(mapped)
