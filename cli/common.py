"""What every `ferry` command shares: the parser class, logging, progress
bars, tar input and output, and the control-client plumbing (address,
token, TLS, running one call, printing its answer)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cli.errors import Failure, UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with a clear message (argparse's default too, kept explicit)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def setup_logging(verbose: bool, volume: str | None = None) -> None:
    host = socket.gethostname()
    fmt = f"%(asctime)s ferry[%(process)d] host={host}" + (f" volume={volume}" if volume else "") + \
          " %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class PeriodicLog:
    """Progress when stderr is no terminal (a service's journal, CI, a pipe):
    one log line at most every `period` seconds, so a long removal or GC
    shows it is moving without flooding the log."""

    def __init__(self, what: str, unit: str, *, period: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 emit: Callable[[str], None] | None = None) -> None:
        self.what, self.unit, self.period, self._clock = what, unit, period, clock
        self._emit = emit if emit is not None else logging.getLogger("ferry").info
        self._last = clock()

    def _amount(self, n: int) -> str:
        return f"{n / 1e6:.1f} MB" if self.unit == "bytes" else f"{n:,} {self.unit}"

    def update(self, done: int, total: int, *_more: int) -> None:
        now = self._clock()
        if now - self._last < self.period:
            return
        self._last = now
        if not total:
            self._emit(f"{self.what}: {self._amount(done)}")
        elif self.unit == "bytes":
            self._emit(f"{self.what}: {self._amount(done)} of {self._amount(total)} ({100 * done / total:.0f}%)")
        else:
            self._emit(f"{self.what}: {done:,} of {self._amount(total)} ({100 * done / total:.0f}%)")


def progress_reporter(what: str, unit: str = "objects"):
    """A progress callback (done, total, ...) and its stop: a rich progress bar
    on a terminal, a log line every 10 s otherwise."""
    if not sys.stderr.isatty():
        return PeriodicLog(what, unit).update, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(what, total=None)
    bar.start()

    def update(done: int, total: int, *_more: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar.stop


def byte_progress(what: str):
    """Like progress_reporter, counting bytes (transfer speed, not items)."""
    if not sys.stderr.isatty():
        return PeriodicLog(what, "bytes").update, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
    bar = Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task(what, total=None)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total or None)

    return update, bar.stop


def open_output(path: str | None):
    """The export's destination: a file, or stdout ('-'), never a terminal."""
    if path in (None, "-"):
        if sys.stdout.isatty():
            raise UsageError("refusing to write a tar to a terminal: pass -o FILE, or redirect (> FILE, | ...)")
        return sys.stdout.buffer, False
    return open(path, "wb"), True


def open_input(path: str | None):
    """(stream, size or 0 if unknown, close it?) of an import's tar: a file, or stdin ('-')."""
    if path in (None, "-"):
        return sys.stdin.buffer, 0, False
    try:
        return open(path, "rb"), os.path.getsize(path), True
    except OSError as e:
        raise Failure(f"cannot read {path}: {e.strerror}") from None


ENV_CONTROL = "FERRY_CONTROL"


ENV_TOKEN = "FERRY_TOKEN"
ENV_TOKEN_FILE = "FERRY_TOKEN_FILE"
DEFAULT_TOKEN_FILE = "/etc/ferry/token"    # where docs/cluster-setup.md and the quickstart put it


MIN_TOKEN = 16


def read_token(token_file: str | None, optional: bool = False, fallbacks: bool = True) -> str:
    """The cluster token from --token-file, else $FERRY_TOKEN, else the file named by
    $FERRY_TOKEN_FILE, else /etc/ferry/token if it exists (UsageError if none,
    "" if `optional`: mutual TLS authenticates instead). A token must be at least
    16 characters, and a token file must not be readable by every user: anyone
    who reads it owns the cluster. `fallbacks=False`: --token-file only (a
    read-only token is never taken from where the cluster token lives)."""
    make = "make one with: head -c 32 /dev/urandom | base64 > /etc/ferry/token && chmod 600 /etc/ferry/token"
    if not fallbacks and not token_file:
        return ""
    if not token_file and not os.environ.get(ENV_TOKEN, "").strip():
        token_file = os.environ.get(ENV_TOKEN_FILE) or (DEFAULT_TOKEN_FILE if os.path.exists(DEFAULT_TOKEN_FILE)
                                                        else None)
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                mode = os.fstat(f.fileno()).st_mode
                token = f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read token file {token_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"token file {token_file} is not text; {make}") from None
        if mode & 0o004:
            raise UsageError(f"token file {token_file} is readable by every user (mode {mode & 0o777:o}); "
                             f"make it private: chmod 600 {token_file}")
        source = f"token file {token_file}"
    else:
        token = os.environ.get(ENV_TOKEN, "").strip()
        if not token:
            if optional:
                return ""
            raise UsageError(f"no cluster token: pass --token-file FILE, set FERRY_TOKEN or FERRY_TOKEN_FILE, "
                             f"or put it in {DEFAULT_TOKEN_FILE} ({make})")
        source = "FERRY_TOKEN"
    if not token:
        raise UsageError(f"{source} is empty; {make}")
    if len(token) < MIN_TOKEN:
        raise UsageError(f"the cluster token in {source} has {len(token)} characters; use at least {MIN_TOKEN} "
                         f"({make})")
    return token


def client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The TLS context --tls, --tls-ca, --tls-cert and --tls-key ask for (None: plain TCP)."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not (args.tls_ca or args.tls or args.tls_cert):
        return None
    try:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load TLS files: {e}") from None
    return ctx


def add_tls_client_args(g: Any) -> None:
    g.add_argument("--tls", action="store_true", help="connect with TLS (system CA store)")
    g.add_argument("--tls-ca", metavar="FILE", help="connect with TLS, trusting this CA file")
    g.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS (implies --tls)")
    g.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert")


def client_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("control service")
    g.add_argument("--control", metavar="ADDR", default=None,
                   help=f"control service HOST:PORT, or every replica's: HOST:PORT,HOST:PORT,... (default "
                        f"${ENV_CONTROL} or 127.0.0.1:7450)")
    g.add_argument("--token-file", metavar="FILE", help=f"cluster token file (default ${ENV_TOKEN}, "
                   f"${ENV_TOKEN_FILE} or {DEFAULT_TOKEN_FILE})")
    add_tls_client_args(g)
    g.add_argument("--json", action="store_true", help="machine-readable output")


def run_client(args: argparse.Namespace, fn: Callable[[Any], Awaitable[int]]) -> int:
    """Run `fn(client)` on a ControlClient built from the common arguments."""
    import trio

    from control.client import DEFAULT_ADDR, ControlClient, ControlError, Unreachable
    addr = args.control or os.environ.get(ENV_CONTROL) or DEFAULT_ADDR
    tls = client_tls(args)
    token = read_token(args.token_file, optional=bool(args.tls_cert))
    try:
        client = ControlClient(addr, token, tls=tls or False)
    except ValueError as e:
        raise UsageError(f"--control: {e}") from None

    async def main() -> int:
        async with client:
            return await fn(client)
    try:
        return trio.run(main)
    except Unreachable as e:
        raise Failure(str(e)) from None
    except ControlError as e:
        if e.code == "bad_request":
            raise UsageError(e.message) from None
        hint = {"unauthorized": " (check --token-file / FERRY_TOKEN)"}.get(e.code, "")
        raise Failure(f"{e.message}{hint} [{e.code}]") from None


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for r in [header, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False)).rstrip())


def lag(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


def kv_list(items: list[str] | None, what: str) -> dict[str, str]:
    from fsd.options import parse_kv
    try:
        return parse_kv(items or [])
    except ValueError as e:
        raise UsageError(f"{what}: {e}") from None


ENV_STORE = "FERRY_STORE"


def store_url(args: argparse.Namespace) -> str:
    url = args.store or os.environ.get(ENV_STORE)
    if not url:
        raise UsageError(f"which store? pass --store URL or set ${ENV_STORE} (the URL the agents use, e.g. "
                         "s3://bucket?endpoint=https://...)")
    return url



METRICS_PORT = 9450


def metrics_addr(value: str | None) -> tuple[str, int] | None:
    """--metrics HOST[:PORT] (default port 9450), checked before anything starts."""
    if value is None:
        return None
    from control.client import parse_addr
    try:
        return parse_addr(value, default_port=METRICS_PORT)
    except ValueError as e:
        raise UsageError(f"--metrics: {e}") from None


def serve_metrics(at: tuple[str, int] | None, registry: Any, what: str) -> None:
    """Serve `registry` at http://HOST:PORT/metrics from prometheus-client's own
    thread (a scrape never blocks the trio loop; what it needs from trio it asks for)."""
    if at is None:
        return
    from prometheus_client import start_http_server
    try:
        start_http_server(at[1], addr=at[0], registry=registry)
    except OSError as e:
        raise Failure(f"--metrics: cannot listen on {at[0]}:{at[1]}: {e.strerror or e}") from None
    logging.getLogger("ferry").info("%s: Prometheus metrics on http://%s:%d/metrics", what, *at)


def add_metrics_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", metavar="ADDR",
                   help=f"serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:{METRICS_PORT} "
                        "(names: docs/metrics.md)")
