"""The store layer against one contract, on a real directory and on the real
S3 wire protocol (moto_server), plus the S3-only and file-only behaviour:
URL parsing, error mapping, retries, outages, and the trio wrapper."""
from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import botocore.exceptions
import pytest
import trio
import urllib3

from fsd.store import open_raw_store
from fsd.store.aio import AsyncStore
from fsd.store.base import NotFound, PreconditionFailed, StoreAuthError, StoreConfigError, StoreError, StoreUnavailable
from fsd.store.filestore import FileStore
from fsd.store.probe import probe_conditional_writes
from fsd.store.s3store import S3Store, map_client_error
from fsd.store.url import StoreSpec, parse_store_url
from tests.conftest import free_port, make_bucket


def client_error(code: str, status: int, op: str = "PutObject") -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, op)


def file_root(url: str) -> Path:
    return Path(parse_store_url(url).path)


# ------------------------------------------------------------------ contract

def test_put_get_range_head_delete(store):
    store.put("v/a/b", b"0123456789")
    assert store.get("v/a/b") == b"0123456789"
    assert store.get("v/a/b", 2, 5) == b"234"
    assert store.get("v/a/b", 7) == b"789"
    assert store.get("v/a/b", None, 3) == b"012"
    assert store.get("v/a/b", 8, 100) == b"89"
    assert store.get("v/a/b", 10) == b""          # range starting at the end
    assert store.get("v/a/b", 50, 60) == b""
    assert store.get("v/a/b", 4, 4) == b""
    assert store.head("v/a/b") == 10
    store.put("v/a/b", b"new")
    assert store.get("v/a/b") == b"new"
    store.delete("v/a/b")
    store.delete("v/a/b")        # idempotent
    assert store.head("v/a/b") is None
    with pytest.raises(NotFound):
        store.get("v/a/b")
    with pytest.raises(NotFound):
        store.get("v/a/b", 0, 4)
    with pytest.raises(NotFound):
        store.get("v/a/b", 3, 3)    # an empty range of a missing key is still missing


def test_delete_many_in_batches_ignores_missing_keys(store):
    names = [f"dm/{i:05d}" for i in range(1203)]           # more than one DeleteObjects request
    for k in names:
        store.put(k, b"x")
    store.put("dm-keep", b"k")
    store.delete_many(names[:1100] + ["dm/missing"])
    assert list(store.list("dm/")) == names[1100:]
    store.delete_many(names[1100:])
    assert list(store.list("dm")) == ["dm-keep"]
    store.delete_many([])


def test_empty_and_large_objects(store):
    store.put("e", b"")
    assert store.get("e") == b""
    assert store.head("e") == 0
    big = os.urandom(3 * 1024 * 1024 + 17)
    store.put("big/obj", big)
    assert store.head("big/obj") == len(big)
    assert store.get("big/obj") == big
    assert store.get("big/obj", 1024 * 1024 - 5, 2 * 1024 * 1024 + 5) == big[1024 * 1024 - 5:2 * 1024 * 1024 + 5]


def test_list_order_prefix_start_after(store):
    keys = ["v/journal/0000000000000001/0000000000000002", "v/journal/0000000000000001/0000000000000001",
            "v/journal/0000000000000002/0000000000000001", "v/epochs/0000000000000001", "w/x", "v/journalx"]
    for k in keys:
        store.put(k, b"x")
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("v/journal/")) == sorted(k for k in keys if k.startswith("v/journal/"))
    assert list(store.list("v/journal")) == sorted(k for k in keys if k.startswith("v/journal"))
    assert list(store.list("v/jo")) == sorted(k for k in keys if k.startswith("v/jo"))
    assert list(store.list("v/journal/", start_after="v/journal/0000000000000001/0000000000000001")) == [
        "v/journal/0000000000000001/0000000000000002", "v/journal/0000000000000002/0000000000000001"]
    # start_after that is not itself a key, and one before the prefix
    assert list(store.list("v/journal/", start_after="v/journal/0000000000000001/")) == sorted(
        k for k in keys if k.startswith("v/journal/"))
    assert list(store.list("v/journal/", start_after="v/journal/0000000000000001/0000000000000002")) == [
        "v/journal/0000000000000002/0000000000000001"]
    assert list(store.list("v/", start_after="a")) == sorted(k for k in keys if k.startswith("v/"))
    assert list(store.list("v/", start_after="v/journalx")) == []
    assert list(store.list("nothing/")) == []
    assert list(store.list("v/journal/0000000000000001/0000000000000001")) == [
        "v/journal/0000000000000001/0000000000000001"]


def test_list_is_lexical_across_directory_boundaries(store):
    """'/' sorts between '-', '.' and '0': a directory walk must interleave."""
    keys = ["d/a/x", "d/a-b", "d/a.b", "d/a0", "d/a/y/z", "d/b", "d/A"]
    for k in keys:
        store.put(k, b"1")
    assert list(store.list("d/")) == sorted(keys)
    assert list(store.list("d/a")) == sorted(k for k in keys if k.startswith("d/a"))
    assert list(store.list("d/", start_after="d/a.b")) == ["d/a/x", "d/a/y/z", "d/a0", "d/b"]
    assert list(store.list("d/", start_after="d/a/x")) == ["d/a/y/z", "d/a0", "d/b"]


def test_list_after_delete_and_overwrite(store):
    for i in range(5):
        store.put(f"k/{i}", b"x")
    store.delete("k/2")
    store.put("k/3", b"y")
    assert list(store.list("k/")) == ["k/0", "k/1", "k/3", "k/4"]


def test_conditional_create_exactly_one_winner(store):
    wins, losses, errors = [], [], []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put("race/key", f"writer {i}".encode(), if_none_match=True)
            wins.append(i)
        except PreconditionFailed:
            losses.append(i)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(wins) == 1 and len(losses) == 7
    assert store.get("race/key") == f"writer {wins[0]}".encode()


def test_conditional_create_after_delete_and_plain_overwrite(store):
    store.put("c", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put("c", b"2", if_none_match=True)
    assert store.get("c") == b"1"
    store.put("c", b"3")                  # unconditional put overwrites
    assert store.get("c") == b"3"
    store.delete("c")
    store.put("c", b"4", if_none_match=True)
    assert store.get("c") == b"4"


def test_probe_detects_conditional_writes(store):
    assert probe_conditional_writes(store)
    assert list(store.list("_probe/")) == []


def test_probe_detects_a_store_that_ignores_the_condition(store):
    class Ignoring:
        url = store.url

        def put(self, key, data, *, if_none_match=False):
            store.put(key, data)

        def __getattr__(self, name):
            return getattr(store, name)

    assert probe_conditional_writes(Ignoring()) is False
    assert list(store.list("_probe/")) == []


def test_probe_answers_false_when_the_header_is_refused(store):
    class Refusing:
        url = store.url

        def put(self, key, data, *, if_none_match=False):
            if if_none_match:
                raise StoreError("does not support PUT (NotImplemented)")
            store.put(key, data)

        def __getattr__(self, name):
            return getattr(store, name)

    assert probe_conditional_writes(Refusing()) is False


async def test_async_store_runs_in_threads_under_the_limit(store):
    loop_thread = threading.get_ident()
    seen_threads: set[int] = set()
    running = 0
    peak = 0
    lock = threading.Lock()

    class Tracking:
        url = store.url

        def put(self, key, data, *, if_none_match=False):
            nonlocal running, peak
            with lock:
                seen_threads.add(threading.get_ident())
                running += 1
                peak = max(peak, running)
            time.sleep(0.05)
            try:
                store.put(key, data, if_none_match=if_none_match)
            finally:
                with lock:
                    running -= 1

        def __getattr__(self, name):
            return getattr(store, name)

    a = AsyncStore(Tracking(), limit=4)
    async with trio.open_nursery() as n:
        for i in range(12):
            n.start_soon(a.put, f"k/{i:02d}", b"x" * i)
    assert loop_thread not in seen_threads
    assert peak == 4
    assert await a.list("k/") == [f"k/{i:02d}" for i in range(12)]
    assert await a.get("k/05") == b"xxxxx"
    assert await a.get("k/05", 1, 3) == b"xx"
    assert await a.head("k/05") == 5
    with pytest.raises(PreconditionFailed):
        await a.put("k/05", b"other", if_none_match=True)
    await a.delete("k/05")
    assert await a.head("k/05") is None
    with pytest.raises(NotFound):
        await a.get("k/05")


# ------------------------------------------------------------------ URLs

@pytest.mark.parametrize("url,spec", [
    ("file:///srv/ferry", StoreSpec("file", path="/srv/ferry")),
    ("file:///srv/ferry/", StoreSpec("file", path="/srv/ferry")),
    ("file://localhost/srv/my%20store", StoreSpec("file", path="/srv/my store")),
    ("s3://bucket", StoreSpec("s3", bucket="bucket")),
    ("s3://my.bucket-1/some/prefix/", StoreSpec("s3", bucket="my.bucket-1", prefix="some/prefix/")),
    ("s3://bkt?endpoint=http://127.0.0.1:9000&region=eu-west-1",
     StoreSpec("s3", bucket="bkt", endpoint="http://127.0.0.1:9000", region="eu-west-1")),
    ("s3://bkt/p?region=auto", StoreSpec("s3", bucket="bkt", prefix="p/", region="auto")),
    ("s3://bkt?endpoint=https%3A%2F%2Fminio.example%3A9000%2F",
     StoreSpec("s3", bucket="bkt", endpoint="https://minio.example:9000")),
])
def test_good_urls(url, spec):
    assert parse_store_url(url) == spec
    assert parse_store_url(spec.to_url()) == spec     # the canonical form round-trips


@pytest.mark.parametrize("url,why", [
    ("http://x", "unsupported scheme"), ("/srv/ferry", "no scheme"), ("file://relative", "not host"),
    ("file:relative", "absolute"), ("file:///a?b=c", "no '?parameters'"), ("file:///a#x", "fragment"),
    ("s3://UPPER", "invalid bucket"), ("s3://ab", "invalid bucket"), ("s3://a..b", "invalid bucket"),
    ("s3://-bucket", "invalid bucket"), ("s3://192.168.1.1", "invalid bucket"), ("s3://", "invalid bucket"),
    ("s3://bucket?bogus=1", "unknown parameter 'bogus'"), ("s3://bucket?region=a&region=b", "twice"),
    ("s3://bucket?endpoint=minio:9000", "endpoint"), ("s3://bucket?endpoint=http://h/path", "endpoint"),
    ("s3://key:secret@bucket", "credentials do not belong"), ("s3://bucket:9000", "endpoint="),
    ("s3://bucket/a//b", "invalid prefix"), ("s3://bucket/../b", "invalid prefix"),
    ("s3://bucket?region=a/b", "invalid region"),
])
def test_bad_urls_are_refused_clearly(url, why):
    with pytest.raises(StoreConfigError, match="accepted forms") as ei:
        parse_store_url(url)
    assert why in str(ei.value)


# ------------------------------------------------------------------ file store

@pytest.mark.parametrize("key", ["", "a//b", "../x", "a/../../x", "a/./b", "/abs", "a/", "a/.tmp-x", "a\0b", "."])
def test_file_store_rejects_bad_keys(file_store_url, key):
    s = open_raw_store(file_store_url)
    for op in (lambda: s.put(key, b"x"), lambda: s.get(key), lambda: s.head(key), lambda: s.delete(key)):
        with pytest.raises(StoreError, match="invalid object key"):
            op()
    assert list(file_root(file_store_url).parent.glob("x")) == []


def test_file_store_missing_directory_says_what_to_do(tmp_path):
    with pytest.raises(StoreConfigError, match=f"mkdir -p {tmp_path}/nope"):
        open_raw_store(f"file://{tmp_path}/nope")
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StoreConfigError, match="not a directory"):
        open_raw_store(f"file://{tmp_path}/f")


def test_file_store_layout_and_no_temp_leftovers(file_store_url):
    s = open_raw_store(file_store_url)
    root = file_root(file_store_url)
    s.put("vol/data/ab/abcdef", b"block")
    assert (root / "vol" / "data" / "ab" / "abcdef").read_bytes() == b"block"
    with pytest.raises(PreconditionFailed):
        s.put("vol/data/ab/abcdef", b"other", if_none_match=True)
    s.put("vol/data/ab/abcdef", b"overwritten")
    assert sorted(p.name for p in (root / "vol" / "data" / "ab").iterdir()) == ["abcdef"]
    # a temp file left by a crash is never listed
    (root / "vol" / "data" / "ab" / ".tmp-deadbeef").write_bytes(b"partial")
    (root / ".tmp-0123").write_bytes(b"partial")
    assert list(s.list("")) == ["vol/data/ab/abcdef"]
    assert list(s.list("vol/data/ab/")) == ["vol/data/ab/abcdef"]


def test_file_store_directories_are_not_objects(file_store_url):
    s = open_raw_store(file_store_url)
    s.put("a/b", b"1")
    assert s.head("a") is None
    with pytest.raises(NotFound):
        s.get("a")
    s.delete("a")                         # not an object: nothing to delete
    assert s.get("a/b") == b"1"
    # S3 allows "a" and "a/b" side by side; a directory cannot: say so.
    with pytest.raises(StoreError, match="both an object and a prefix"):
        s.put("a", b"2")
    with pytest.raises(StoreError, match="both an object and a prefix"):
        s.put("a", b"2", if_none_match=True)
    with pytest.raises(StoreError, match="both an object and a prefix"):
        s.put("a/b/c", b"3")
    assert list(s.list("")) == ["a/b"]


def test_file_store_list_walks_only_the_prefix_directory(file_store_url, monkeypatch):
    s = open_raw_store(file_store_url)
    for i in range(3):
        s.put(f"vol/data/{i:02x}/h{i}", b"x")
        s.put(f"other/{i}", b"x")
    scanned: list[str] = []
    real = os.scandir

    def spy(path):
        scanned.append(os.path.relpath(path, file_root(file_store_url)))
        return real(path)

    monkeypatch.setattr(os, "scandir", spy)
    assert list(s.list("vol/data/01/")) == ["vol/data/01/h1"]
    assert scanned == ["vol/data/01"]
    scanned.clear()
    assert list(s.list("vol/data/0")) == ["vol/data/00/h0", "vol/data/01/h1", "vol/data/02/h2"]
    assert scanned == ["vol/data", "vol/data/00", "vol/data/01", "vol/data/02"]
    scanned.clear()
    assert list(s.list("vol/data/", start_after="vol/data/01/h1")) == ["vol/data/02/h2"]
    assert "vol/data/00" not in scanned
    assert list(s.list("../")) == [] and list(s.list("a//")) == []


@pytest.mark.parametrize("err,exc,advice", [
    (errno.EACCES, StoreAuthError, "permission denied"), (errno.ENOSPC, StoreUnavailable, "check the disk"),
    (errno.EROFS, StoreError, "Read-only"),
])
def test_file_store_os_errors_are_store_errors(file_store_url, monkeypatch, err, exc, advice):
    """The CLI and the committer handle StoreError, not raw OSError."""
    s = open_raw_store(file_store_url)
    s.put("d/x", b"1")
    real_open = os.open

    def failing_open(path, flags, *a):
        if ".tmp-" in str(path):
            raise OSError(err, os.strerror(err), str(path)) if err != errno.EACCES else \
                PermissionError(err, os.strerror(err), str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(exc, match=advice) as ei:
        s.put("d/y", b"2")
    assert type(ei.value) is exc
    monkeypatch.undo()
    assert list(s.list("d/")) == ["d/x"]


def test_file_store_permission_denied_for_real(file_store_url):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    s = open_raw_store(file_store_url)
    root = file_root(file_store_url)
    s.put("locked/x", b"1")
    (root / "locked").chmod(0o500)
    try:
        with pytest.raises(StoreAuthError, match="permission denied"):
            s.put("locked/y", b"2")
    finally:
        (root / "locked").chmod(0o700)


# ------------------------------------------------------------------ S3 store

def test_s3_missing_bucket(moto_endpoint):
    with pytest.raises(StoreConfigError, match="bucket no-such-bucket-here does not exist .* create it first"):
        open_raw_store(f"s3://no-such-bucket-here?endpoint={moto_endpoint}&region=us-east-1")
    # without the early check, the first operation says the same
    s = open_raw_store(f"s3://no-such-bucket-here?endpoint={moto_endpoint}&region=us-east-1", check=False)
    with pytest.raises(StoreConfigError, match="no-such-bucket-here does not exist"):
        s.put("k", b"1")
    with pytest.raises(StoreConfigError, match="does not exist"):
        list(s.list(""))


def test_s3_unreachable_endpoint_is_unavailable_quickly():
    url = f"s3://bucket?endpoint=http://127.0.0.1:{free_port()}&region=us-east-1"
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"cannot reach object store at http://127\.0\.0\.1:\d+ .*3 attempt"):
        open_raw_store(url, attempts=3, base_delay=0.01, connect_timeout=1)
    s = S3Store(parse_store_url(url), attempts=2, base_delay=0.01, connect_timeout=1)
    with pytest.raises(StoreUnavailable, match="check the endpoint and the network"):
        s.get("x")
    assert time.monotonic() - t0 < 5


def test_s3_prefix_is_transparent(moto_endpoint):
    b = make_bucket(moto_endpoint)
    s = open_raw_store(f"s3://{b}/some/prefix?endpoint={moto_endpoint}")
    s.put("v/k", b"1")
    s.put("v/l", b"2")
    assert list(s.list("v/")) == ["v/k", "v/l"]
    assert list(s.list("v/", start_after="v/k")) == ["v/l"]
    assert s.get("v/k") == b"1" and s.head("v/l") == 1
    raw = open_raw_store(f"s3://{b}?endpoint={moto_endpoint}")
    raw.put("outside", b"x")
    assert list(raw.list("")) == ["outside", "some/prefix/v/k", "some/prefix/v/l"]
    assert list(s.list("")) == ["v/k", "v/l"]
    s.delete("v/k")
    assert list(raw.list("some/")) == ["some/prefix/v/l"]


def test_s3_list_paginates(s3_store_url):
    s = open_raw_store(s3_store_url)
    s.page_size = 7
    keys = [f"p/{i:03d}" for i in range(40)]
    for k in keys + ["q/0"]:
        s.put(k, b"")
    pages = []
    real = s.client.list_objects_v2
    s.client.list_objects_v2 = lambda **kw: pages.append(kw) or real(**kw)
    assert list(s.list("p/")) == keys
    assert len(pages) == 6 and "StartAfter" not in pages[1] and pages[1]["ContinuationToken"]
    assert list(s.list("p/", start_after="p/019")) == keys[20:]


class Flaky:
    """Wraps a botocore client method: fails the first `n` calls with `exc`,
    optionally after really performing the call (a lost response)."""

    def __init__(self, real, exc: Exception, n: int, apply_first: bool = False) -> None:
        self.real, self.exc, self.n, self.apply_first = real, exc, n, apply_first
        self.calls = 0

    def __call__(self, *a, **kw):
        self.calls += 1
        if self.calls <= self.n:
            if self.apply_first:
                self.real(*a, **kw)
            raise self.exc
        return self.real(*a, **kw)


@pytest.fixture(params=["data-path", "boto3"])
def flaky_store(request, s3_store_url):
    """(store, make_flaky(method, exc, n, apply_first)): the store's data
    calls (GET, PUT) replaced by a Flaky wrapper, on the lean data path
    (fsd/store/s3data.py) and on the boto3 client it falls back to."""
    lean = request.param == "data-path"

    def make(**kw):
        s = open_raw_store(s3_store_url, data_path=lean, **kw)
        assert (s.data is not None) == lean

        def flaky(method: str, exc: Exception, n: int, apply_first: bool = False) -> Flaky:
            target = s.data if lean else s.client
            f = Flaky(getattr(target, method), exc, n, apply_first)
            setattr(target, method, f)
            return f
        return s, flaky
    return make


def test_s3_retries_throttling_then_succeeds(flaky_store):
    s, flaky = flaky_store(base_delay=0.01)
    f = flaky("put_object", client_error("SlowDown", 503), 3)
    s.put("k", b"v")
    assert f.calls == 4
    assert s.get("k") == b"v"


def test_s3_gives_up_after_the_configured_attempts(flaky_store):
    s, flaky = flaky_store(attempts=4, base_delay=0.01)
    f = flaky("get_object", client_error("InternalError", 500), 100)
    with pytest.raises(StoreUnavailable, match="InternalError.*after 4 attempt"):
        s.get("k")
    assert f.calls == 4


def test_s3_does_not_retry_permanent_errors(flaky_store):
    s, flaky = flaky_store(base_delay=0.01)
    f = flaky("put_object", client_error("AccessDenied", 403), 100)
    with pytest.raises(StoreAuthError, match="credentials refused"):
        s.put("k", b"v")
    assert f.calls == 1


def test_s3_conditional_create_with_lost_response_is_ours(flaky_store):
    """The first attempt is applied but its response is lost; the retry gets
    412 for our own write, which must count as success, not as fencing."""
    s, flaky = flaky_store(base_delay=0.01)
    lost = botocore.exceptions.ReadTimeoutError(endpoint_url="http://e")
    f = flaky("put_object", lost, 1, apply_first=True)
    s.put("seg", b"mine", if_none_match=True)
    assert f.calls == 2 and s.get("seg") == b"mine"


def test_s3_conditional_create_lost_to_another_writer_still_fails(flaky_store):
    s, flaky = flaky_store(base_delay=0.01)
    s.put("seg", b"theirs")
    flaky("put_object", urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), 1)
    with pytest.raises(PreconditionFailed):
        s.put("seg", b"mine", if_none_match=True)
    assert s.get("seg") == b"theirs"


def test_s3_data_path_errors_are_the_clients(s3_store_url):
    """The lean path reports S3's refusals as boto3 does, against the real
    wire protocol: a missing key, a taken key, a missing bucket, a dead server."""
    lean, boto = open_raw_store(s3_store_url), open_raw_store(s3_store_url, data_path=False)
    assert lean.data is not None and boto.data is None
    for s in (lean, boto):
        with pytest.raises(NotFound):
            s.get("nope")
        s.put("taken", b"1")
        with pytest.raises(PreconditionFailed):
            s.put("taken", b"2", if_none_match=True)
        assert s.get("taken") == b"1"
    big = os.urandom(3 << 20)
    lean.put("big", big)
    assert boto.get("big") == big and lean.get("big") == big
    assert lean.data.base_url.endswith("/" + lean.bucket + "/")     # path style on a custom endpoint
    lean.data._creds = None                                          # as with no credentials anywhere
    with pytest.raises(StoreAuthError, match="AWS_ACCESS_KEY_ID"):
        lean.get("taken")


def test_s3_data_path_is_off_behind_a_proxy(s3_store_url, monkeypatch):
    """urllib3 would ignore the proxy that boto3 honours, so the store keeps to boto3."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    s = S3Store(parse_store_url(s3_store_url))
    assert s.data is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert S3Store(parse_store_url(s3_store_url)).data is not None


def test_s3_missing_credentials_are_an_auth_error(s3_store_url):
    s = open_raw_store(s3_store_url)
    s.client.head_object = Flaky(s.client.head_object, botocore.exceptions.NoCredentialsError(), 100)
    with pytest.raises(StoreAuthError, match="AWS_ACCESS_KEY_ID"):
        s.head("k")


@pytest.mark.parametrize("code,status,exc", [
    ("InvalidAccessKeyId", 403, StoreAuthError), ("SignatureDoesNotMatch", 403, StoreAuthError),
    ("AccessDenied", 403, StoreAuthError), ("403", 403, StoreAuthError), ("ExpiredToken", 400, StoreAuthError),
    ("RequestTimeTooSkewed", 403, StoreAuthError),
    ("NoSuchBucket", 404, StoreConfigError), ("PermanentRedirect", 301, StoreConfigError),
    ("AuthorizationHeaderMalformed", 400, StoreConfigError),
    ("NoSuchKey", 404, NotFound), ("404", 404, NotFound),
    ("PreconditionFailed", 412, PreconditionFailed), ("ConditionalRequestConflict", 409, PreconditionFailed),
    ("SlowDown", 503, StoreUnavailable), ("InternalError", 500, StoreUnavailable),
    ("ServiceUnavailable", 503, StoreUnavailable), ("RequestTimeout", 400, StoreUnavailable),
    ("TooManyRequests", 429, StoreUnavailable), ("502", 502, StoreUnavailable),
    ("NotImplemented", 501, StoreError), ("InvalidArgument", 400, StoreError),
    ("BucketNotEmpty", 409, StoreError),
])
def test_s3_error_mapping(code, status, exc):
    """moto accepts any credentials, so the mapping of refusals is checked on
    the botocore errors S3 returns."""
    mapped = map_client_error(client_error(code, status), "PUT k", "http://e", "bkt")
    assert type(mapped) is exc
    if exc is StoreAuthError and code != "RequestTimeTooSkewed":
        assert "credentials refused by http://e" in str(mapped) and "AWS_ACCESS_KEY_ID" in str(mapped)
    if exc is StoreConfigError:
        assert "bkt" in str(mapped)
    if code == "RequestTimeTooSkewed":
        assert "clock" in str(mapped)


def test_s3_outage_and_recovery(moto_control):
    """A store that goes away is StoreUnavailable (after the bounded retries)
    and usable again once it is back; the restarted moto is empty."""
    bucket = moto_control.make_bucket()
    s = open_raw_store(moto_control.store_url(bucket), attempts=2, base_delay=0.01, connect_timeout=1)
    s.put("k", b"before")
    port = moto_control.port
    moto_control.stop()
    assert not moto_control.running
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        s.get("k")
    moto_control.start()
    assert moto_control.port == port and moto_control.running
    with pytest.raises(StoreConfigError, match="does not exist"):
        s.get("k")                        # moto forgot everything, bucket included
    moto_control.make_bucket(bucket)
    s.put("k", b"after")                  # the same client reconnects
    assert s.get("k") == b"after"


def test_file_store_object_is_a_plain_file_store(file_store_url):
    assert isinstance(open_raw_store(file_store_url), FileStore)
    assert open_raw_store(file_store_url).url == file_store_url


def test_s3_data_path_names_keys_as_boto3_does(s3_store_url):
    """Keys with characters that need escaping reach S3 under the same name
    through either path (the signature covers the escaped path)."""
    lean, boto = open_raw_store(s3_store_url), open_raw_store(s3_store_url, data_path=False)
    for key in ("a b+c/ü~x", "v/100%/=&?#", "plain/k.0000000000000001"):
        lean.put(key, key.encode())
        assert boto.get(key) == key.encode() and lean.get(key) == key.encode()
        assert key in list(boto.list(key.split("/")[0]))


def test_s3_data_path_addresses_aws_buckets_like_boto3():
    """No endpoint (AWS): virtual-hosted names, path style for dotted buckets
    (their names break TLS wildcards). Building the store is offline."""
    s = S3Store(parse_store_url("s3://my-bucket/pre?region=eu-west-1"))
    assert s.data is not None and s.data.base_url == "https://my-bucket.s3.eu-west-1.amazonaws.com/"
    s = S3Store(parse_store_url("s3://my.dotted.bucket?region=eu-west-1"))
    assert s.data is not None and s.data.base_url == "https://s3.eu-west-1.amazonaws.com/my.dotted.bucket/"


def test_a_missing_file_store_directory_is_created_only_by_commands_that_set_one_up(tmp_path, caplog):
    missing = tmp_path / "nfs-share" / "ferry-store"
    with pytest.raises(StoreConfigError, match="does not exist; create it with: mkdir -p"):
        open_raw_store(f"file://{missing}")                 # fsck, gc, mount: a typo or an unmounted share
    assert not missing.exists()
    with caplog.at_level("WARNING", logger="ferry.store"):
        store = open_raw_store(f"file://{missing}", create=True)
    assert missing.is_dir() and (missing.stat().st_mode & 0o777) == 0o700
    assert any("did not exist: created it" in r.getMessage() and str(missing) in r.getMessage()
               for r in caplog.records), caplog.text
    store.put("k", b"v")
    assert open_raw_store(f"file://{missing}").get("k") == b"v"
    caplog.clear()
    with caplog.at_level("WARNING", logger="ferry.store"):
        open_raw_store(f"file://{missing}", create=True)      # there now: nothing to say
    assert not caplog.records
