"""The status page (`ferry control serve --http`): the document it shows, its
guard, and the page itself in a real browser (Debian's headless Chromium)
against a live control service: two hosts and a volume moved between them,
a label full of HTML shown as text, nothing shown without the token; a
screenshot at a phone's size is saved with the test's files."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import trio

from control import leases as L
from control.httpd import Request
from control.leases import Cluster, Config
from control.web import WebApp, serve_web, status_document
from tests.control.conftest import TOKEN

CHROMIUM = shutil.which("chromium")
HTML_LABEL = '<b id="injected">bold</b><script>document.title="pwned"</script>'


def moved_cluster() -> Cluster:
    c = Cluster(config=Config(ttl=10.0, heartbeat=2.0))
    for h in ("h-a", "h-b"):
        c.apply(L.register_host(c, h, f"{h}:1", "0.1.0", now=0.0, wall=1000.0))
    c.apply(L.create_volume(c, "db", {"durability": "local"}, {"app": HTML_LABEL}, wall=1000.0))
    c.apply(L.acquire(c, "db", "h-a", 1.0))
    c.apply(L.release(c, "db", "h-a", None, 2.0))
    c.apply(L.acquire(c, "db", "h-b", 3.0))
    return c


def test_the_status_document_shows_the_new_owner_and_keeps_labels_as_data():
    doc = status_document(moved_cluster(), 4.0, 1234.0)
    assert [h["host"] for h in doc["hosts"]] == ["h-a", "h-b"] and all(h["alive"] for h in doc["hosts"])
    (v,) = doc["volumes"]
    assert v["name"] == "db" and v["owner"] == "h-b" and v["durability"] == "local" and v["layout"] == "files"
    assert v["labels"] == {"app": HTML_LABEL}
    assert doc["moves"] == [] and doc["removals"] == [] and doc["generated"] == 1234.0
    assert "token" not in json.dumps(doc).lower()


def req(path: str, token: str | None = None, method: str = "GET") -> Request:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return Request(method=method, path=path, query="", headers=headers, body=b"")


async def test_the_api_needs_a_token_and_the_page_carries_no_data():
    app = WebApp(lambda: {"hosts": ["secret-host"]}, [TOKEN, "read-only-token-0123456789"])
    for token in (None, "", "wrong", TOKEN[:-1]):
        r = await app.answer(req("/api/status", token))
        assert r.status == 401 and b"secret-host" not in r.body
    for token in (TOKEN, "read-only-token-0123456789"):
        r = await app.answer(req("/api/status", token))
        assert r.status == 200 and json.loads(r.body) == {"hosts": ["secret-host"]}
    page = await app.answer(req("/"))
    assert page.status == 200 and b"secret-host" not in page.body and b"app.js" in page.body
    csp = dict(page.headers)["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert (await app.answer(req("/app.js"))).status == 200
    assert (await app.answer(req("/nope"))).status == 404
    assert (await app.answer(req("/api/status", TOKEN, method="POST"))).status == 405
    with pytest.raises(ValueError):
        WebApp(dict, ["", ""])


def chromium(url: str, tmp: Path, *extra: str) -> str:
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp}",
                        "--virtual-time-budget=10000", *extra, url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install.sh --tests does)")
async def test_the_page_in_a_real_browser(control, nursery, tmp_path):
    async with control.client() as c:
        for h in ("h-a", "h-b"):
            await c.host_register(h, f"{h}:1", "0.1.0")
        await c.volume_create("db", {"durability": "local"}, {"app": HTML_LABEL})
        await c.volume_create("logs")
        assert (await c.lease_acquire("db", "h-a"))["status"] == "granted"
        await c.lease_release("db", "h-a")
        assert (await c.lease_acquire("db", "h-b"))["status"] == "granted"
        await c.host_heartbeat("h-a", [])
        await c.host_heartbeat("h-b", [])
    port = await nursery.start(serve_web, WebApp(control.server.web_status, [TOKEN]), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}/"

    dom = await trio.to_thread.run_sync(chromium, base + "#token=" + TOKEN, tmp_path / "profile-1", "--dump-dom")
    assert "h-a" in dom and "h-b" in dom and "on h-b" in dom, dom
    assert "2/2 hosts alive, 2 volumes" in dom, dom
    assert '<form id="login" hidden="">' in dom, dom     # the token was taken: no form
    assert "durability" in dom and "local" in dom
    # The label's HTML is text: serialised escaped, never an element or a run script
    assert '<b id="injected">' not in dom and '&lt;b id="injected"&gt;bold&lt;/b&gt;' in dom, dom
    assert "pwned" not in dom.split("<title>")[1].split("</title>")[0]
    assert TOKEN not in dom        # taken from the address, kept out of the page

    dom = await trio.to_thread.run_sync(chromium, base, tmp_path / "profile-2", "--dump-dom")
    assert "h-a" not in dom and "db" not in dom.split("<main>")[1]
    assert '<form id="login">' in dom, dom          # shown, not hidden: it asks for the token

    async with control.client() as c:      # alive on the picture too (this fixture's TTL is 2 s)
        await c.host_heartbeat("h-a", [])
        await c.host_heartbeat("h-b", [{"name": "db", "in_use": True, "epoch": 3, "upload_lag_s": 0.4}])
    shot = tmp_path / "status-page.png"
    await trio.to_thread.run_sync(lambda: chromium(base + "#token=" + TOKEN, tmp_path / "profile-3",
                                                   f"--screenshot={shot}", "--window-size=390,1400"))
    assert shot.stat().st_size > 10_000
    print(f"status page screenshot: {shot}")


def test_control_serve_http_flag(tmp_path):
    """`--http` serves the page (HTTPS would need --tls-cert); without a token to check it refuses to start."""
    import sys
    import urllib.error
    import urllib.request

    from tests.conftest import free_port
    from tests.helpers.net import wait_listening
    root = Path(__file__).parents[2]
    port, wport = free_port(), free_port()
    base = [sys.executable, "-m", "cli", "control", "serve", "--listen", f"127.0.0.1:{port}",
            "--state", f"sqlite:{tmp_path / 'c.db'}", "--http", f"127.0.0.1:{wport}"]
    r = subprocess.run(base, capture_output=True, text=True, cwd=root, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 2 and "token" in r.stderr, r.stderr
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    with open(tmp_path / "control.log", "wb") as log:   # the child has its own copy of the descriptor
        proc = subprocess.Popen([*base, "--token-file", str(tmp_path / "token")], stdout=log, stderr=log, cwd=root)
    try:
        wait_listening("127.0.0.1", wport, proc, tmp_path / "control.log")
        page = urllib.request.urlopen(f"http://127.0.0.1:{wport}/", timeout=10).read()
        assert b"<title>ferry: cluster status</title>" in page
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{wport}/api/status", timeout=10)
        assert e.value.code == 401
        authed = urllib.request.Request(f"http://127.0.0.1:{wport}/api/status",
                                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert json.loads(urllib.request.urlopen(authed, timeout=10).read())["hosts"] == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_head_and_slow_clients_do_not_stop_the_page(nursery):
    port = await nursery.start(serve_web, WebApp(lambda: {"hosts": []}, [TOKEN]), "127.0.0.1", 0)

    async def exchange(data: bytes) -> bytes:
        s = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await s.send_all(data)
            out = bytearray()
            with trio.fail_after(10):
                while chunk := await s.receive_some(65536):
                    out += chunk
            return bytes(out)
        finally:
            await s.aclose()
    out = await exchange(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET /app.css HTTP/1.1\r\nHost: x\r\n"
                         b"Connection: close\r\n\r\n")
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length" in head.lower(), out
    assert rest.startswith(b"HTTP/1.1 200") and b"box-sizing" in rest, out   # no body after HEAD's headers
    out = await exchange(b"NOT HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    assert (await exchange(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).startswith(
        b"HTTP/1.1 404")


def test_plain_http_page_only_on_loopback(tmp_path):
    import sys
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "token").chmod(0o600)
    r = subprocess.run([sys.executable, "-m", "cli", "control", "serve", "--listen", "127.0.0.1:1",
                        "--state", f"sqlite:{tmp_path / 'c.db'}", "--token-file", str(tmp_path / "token"),
                        "--http", "0.0.0.0:7451"], capture_output=True, text=True, cwd=Path(__file__).parents[2],
                       timeout=60)
    assert r.returncode == 2 and "--tls-cert" in r.stderr and "127.0.0.1" in r.stderr, r.stderr
