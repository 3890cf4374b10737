"""`ferry control serve`, `ferry volume ...`, `ferry snapshot ...`, `ferry hosts
ls`, `ferry status`; `control`'s state commands come from `cli.state`, and
`volume export/import` from `cli.backup`.

Why a thin layer: every client command is one call of `control.client`
(the same code the agents use) plus formatting; errors become
`cli.errors` exceptions so every ferry command fails the same way
(exit 1 with an explanation, exit 2 for usage errors).
"""
from __future__ import annotations

import argparse
import contextlib
import ssl
import time

from cli import backup, state
from cli.common import (
    DEFAULT_TOKEN_FILE,
    ENV_TOKEN,
    ENV_TOKEN_FILE,
    add_metrics_arg,
    client_args,
    kv_list,
    lag,
    metrics_addr,
    print_json,
    progress_reporter,
    read_token,
    run_client,
    serve_metrics,
    table,
)
from cli.errors import Failure, UsageError

EXAMPLES_SERVE = """\
examples:
  head -c 32 /dev/urandom | base64 > /etc/ferry/token && chmod 600 /etc/ferry/token
  ferry control serve --listen 0.0.0.0:7450 --state sqlite:/var/lib/ferry/control.db \\
      --token-file /etc/ferry/token
  ferry control serve --listen 0.0.0.0:7450 --state sqlite:/var/lib/ferry/control.db \\
      --token-file /etc/ferry/token --tls-cert /etc/ferry/control.crt --tls-key /etc/ferry/control.key
  # one of several replicas (run the same on each control host), state in etcd:
  ferry control serve --listen 0.0.0.0:7450 --token-file /etc/ferry/token \\
      --state etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 \\
      --etcd-ca /etc/ferry/etcd-ca.crt --etcd-cert /etc/ferry/etcd.crt --etcd-key /etc/ferry/etcd.key

The service records volumes, hosts and leases; it never touches data.
Agents heartbeat every --heartbeat seconds; a host silent for --lease-ttl
seconds loses its leases (another host may then take its volumes over).
"""

EXAMPLES_VOLUME = """\
examples:
  export FERRY_CONTROL=10.0.0.1:7450 FERRY_TOKEN=$(cat /etc/ferry/token)
  ferry volume create pgdata -o durability=local -o size=50G --label app=postgres
  ferry volume ls
  ferry volume inspect pgdata        # owner, epoch, durability, upload lag
  ferry volume move pgdata --to host-b
  ferry volume resize pgblk 50G      # a layout=block volume: grown online where it is mounted
  ferry volume rm pgdata             # refused while a live host holds it
  ferry volume rm pgdata --wait      # ... and follow the deletion of its objects
  ferry snapshot create pgdata nightly
  ferry volume create pgtest --from pgdata@nightly          # a clone: metadata only, shares the data
  ferry volume create pgfix --from pgdata@2026-11-29T10:15:00Z   # the state as of that moment
  ferry volume create pgfix2 --from pgdata@-15m             # ... 15 minutes ago
"""


# ------------------------------------------------------------------ helpers


# ------------------------------------------------------------------- serve
def _raise_fd_limit() -> None:
    """Every agent keeps a few connections open: 1,000 agents need more than the
    usual soft limit of 1,024 descriptors, so take what the hard limit allows."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _web_args(args: argparse.Namespace, token: str | None) -> tuple[tuple[str, int] | None, list[str]]:
    """--http ADDR and the tokens its page accepts (the cluster token, the read-only one)."""
    from control.client import parse_addr
    if args.http is None:
        if args.http_read_token_file:
            raise UsageError("--http-read-token-file goes with --http ADDR")
        return None, []
    try:
        at = parse_addr(args.http, default_port=7451)
    except ValueError as e:
        raise UsageError(f"--http: {e}") from None
    tokens = [t for t in (token, read_token(args.http_read_token_file, optional=True, fallbacks=False)
                          if args.http_read_token_file else None) if t]
    if not tokens:
        raise UsageError("--http: the page needs a token to check: the cluster token (--token-file), or a "
                         "read-only one (--http-read-token-file)")
    if not args.tls_cert and not _loopback(at[0]):
        raise UsageError(f"--http {args.http}: over plain HTTP the token the page sends could be read on the "
                         f"network; give the service --tls-cert/--tls-key (the page is then HTTPS), or bind the "
                         f"page to 127.0.0.1 and reach it through an SSH tunnel")
    return at, tokens


def _loopback(host: str) -> bool:
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unwrap(e: BaseException) -> BaseException:
    """The one exception inside trio's (nested) single-member exception groups."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from control.client import parse_addr
    from control.leases import Config
    from control.server import ControlServer, server_ssl_context
    from control.state import StateError
    from control.web import WebApp, serve_web
    try:
        host, port = parse_addr(args.listen)
        config = Config(ttl=args.lease_ttl, heartbeat=args.heartbeat)
    except ValueError as e:
        raise UsageError(str(e)) from None
    metrics_at = metrics_addr(args.metrics)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise UsageError("--tls-client-ca needs --tls-cert and --tls-key")
    token = read_token(args.token_file, optional=bool(args.tls_client_ca)) or None
    ctx = None
    if args.tls_cert:
        try:
            ctx = server_ssl_context(args.tls_cert, args.tls_key, args.tls_client_ca)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"cannot load TLS certificate/key: {e}") from None
    web_at, web_tokens = _web_args(args, token)
    state_store = state.open_state_from_args(args)
    _raise_fd_limit()
    server = ControlServer(state_store, token, config)
    serve_metrics(metrics_at, server.metrics.registry, "control service")

    async def serve() -> None:
        try:
            async with trio.open_nursery() as n:
                await n.start(server.serve, host, port, ctx)
                if web_at is not None:
                    web_tls = server_ssl_context(args.tls_cert, args.tls_key) if args.tls_cert else None
                    try:
                        await n.start(serve_web, WebApp(server.web_status, web_tokens), *web_at, web_tls)
                    except OSError as e:
                        raise Failure(f"--http: cannot listen on {args.http}: {e.strerror or e}") from None
        finally:
            with trio.CancelScope(shield=True):
                await state_store.aclose()
    try:
        trio.run(serve)
    except BaseException as group:      # trio groups what the nursery raised
        inner = _unwrap(group)
        if isinstance(inner, (Failure, KeyboardInterrupt)):
            raise inner from None
        if isinstance(inner, OSError):
            raise Failure(f"cannot listen on {args.listen}: {inner.strerror or inner}") from None
        if isinstance(inner, StateError):
            raise Failure(str(inner)) from None
        raise
    return 0


# ------------------------------------------------------------------ volume
def cmd_volume_create(args: argparse.Namespace) -> int:
    from control.validate import validate_volume_name, validate_volume_options
    options = kv_list(args.option, "-o")
    labels = kv_list(args.label, "--label")
    if args.source:
        options["from"] = args.source
    try:   # checked here too, so a typo is a usage error before any connection
        validate_volume_name(args.name)
        validate_volume_options(args.name, options)
    except ValueError as e:
        raise UsageError(str(e)) from None

    async def go(c) -> int:
        v = await c.volume_create(args.name, options, labels, wait=args.timeout)
        if args.json:
            print_json(v)
        elif "from" in options:
            print(f"volume {v['name']} created as a clone of {options['from']} (it shares the origin's data; "
                  f"writes to either never show in the other)")
        else:
            print(f"volume {v['name']} recorded (durability {v['durability']}); the agent formats it on "
                  f"the store when a host first uses it")
        return 0
    return run_client(args, go)


def _removal_state(r: dict) -> str:
    """'deleting 45% (1200/2700 objects, 12.0 MB freed)' for a removal view."""
    if r.get("total") is None:
        return "deleting (starting)" if r.get("alive") else "deleting (host down: another host takes over)"
    total = r["total"] or 0
    pct = 100 * r["deleted"] // total if total else 100
    return f"deleting {pct}% ({r['deleted']}/{total} objects, {r['bytes'] / 1e6:.1f} MB freed)"


def _removal_rows(removals: list) -> list[list[str]]:
    return [[r["name"], "-", r["host"], "-", _removal_state(r), "-"] for r in removals]


def cmd_volume_ls(args: argparse.Namespace) -> int:
    async def go(c) -> int:
        vols = await c.volume_list()
        removals = await c.removal_list()
        if args.json:
            print_json(vols if not removals else {"volumes": vols, "removals": removals})
            return 0
        rows = []
        for v in vols:
            lease = v["lease"] or {}
            use = ("in use" if lease.get("in_use") else "idle") if lease else "-"
            if v.get("state") == "removing":
                use = f"removing (host {v.get('removing') or 'none alive yet'} fences it)"
            rows.append([v["name"], v["durability"], lease.get("host") or "-",
                         "-" if lease.get("epoch") is None else str(lease["epoch"]), use,
                         lag(lease.get("upload_lag_s"))])
        rows.extend(_removal_rows(removals))
        table(rows, ["NAME", "DURABILITY", "OWNER", "EPOCH", "STATE", "UPLOAD LAG"])
        return 0
    return run_client(args, go)


def cmd_volume_inspect(args: argparse.Namespace) -> int:
    async def go(c) -> int:
        v = await c.volume_get(args.name)
        if args.json:
            print_json(v)
            return 0
        lease = v["lease"]
        print(f"name          {v['name']}")
        print(f"created       {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(v['created']))}")
        print(f"durability    {v['durability']}")
        print(f"size limit    {v.get('size') or 'default'}")
        print(f"options       {', '.join(f'{k}={x}' for k, x in sorted(v['options'].items())) or '-'}")
        print(f"labels        {', '.join(f'{k}={x}' for k, x in sorted(v['labels'].items())) or '-'}")
        if lease:
            state = "alive" if lease["alive"] else "EXPIRED (another host may take it over)"
            print(f"owner         {lease['host']} ({state}, lease expires in {lease['expires_in']}s)")
            print(f"epoch         {lease['epoch'] if lease['epoch'] is not None else 'not reported yet'}")
            print(f"in use        {'yes' if lease['in_use'] else 'no'}")
            print(f"upload lag    {lag(lease['upload_lag_s'])}")
        else:
            print("owner         none (not mounted anywhere)")
        if v.get("move"):
            print(f"moving to     {v['move']['to']}")
        gc = v.get("last_gc")
        if gc:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(gc["at"]))
            print(f"last GC       {when} by the owner: freed {gc['objects']} objects, "
                  f"{gc['freed_bytes'] / 1e6:.1f} MB; live data {gc['live_bytes'] / 1e6:.1f} MB"
                  + (f" (stopped: {gc['error']})" if gc.get("error") else ""))
        elif lease:
            print("last GC       none yet by this owner (ferry fs inspect reads the stored report)")
        if v.get("state") == "removing":
            print(f"state         being removed (host {v.get('removing') or 'none alive yet'} fences it)")
        snaps = sorted(v.get("snapshots") or {})
        print(f"snapshots     {', '.join(snaps) if snaps else 'none'}")
        return 0
    return run_client(args, go)


def cmd_volume_rm(args: argparse.Namespace) -> int:
    async def go(c) -> int:
        r = await c.volume_remove(args.name, wait=args.timeout)
        if r["status"] != "removed":
            raise Failure(f"volume {args.name} is marked for removal, but {r.get('message') or 'not fenced yet'}")
        if not r.get("root"):
            print(f"volume {args.name} removed (it had no data on the store)")
            return 0
        print(f"volume {args.name} removed: fenced in the store; host {r['host']} deletes its objects in the "
              f"background (ferry volume ls shows the progress)")
        if args.wait:
            await _wait_deleted(c, r["root"])
        return 0
    return run_client(args, go)


async def _wait_deleted(c, root: str) -> None:
    """Follow a deletion until its job is gone, with a progress bar on a terminal."""
    import trio
    update, stop = progress_reporter(f"deleting {root}")
    try:
        while True:
            jobs = [r for r in await c.removal_list() if r["root"] == root]
            if not jobs:
                break
            if update and jobs[0].get("total") is not None:
                update(jobs[0]["deleted"], jobs[0]["total"])
            await trio.sleep(0.5)
    finally:
        stop()
    print(f"{root}: every object deleted")


def cmd_volume_move(args: argparse.Namespace) -> int:
    async def go(c) -> int:
        r = await c.volume_move(args.name, args.to, wait=args.wait)
        if args.json:
            print_json(r)
            return 0 if r["status"] in ("done", "free", "released") else 1
        st = r["status"]
        if st == "done":
            print(f"volume {args.name} is already on {args.to}")
        elif st == "free":
            print(f"volume {args.name} is not held by any live host; {args.to} takes it at its next mount")
        elif st == "released":
            print(f"volume {args.name} released by {r['from']}; {args.to} takes it at its next mount")
        else:
            raise Failure(r.get("message") or f"move of {args.name} is {st}")
        return 0
    return run_client(args, go)


def cmd_volume_resize(args: argparse.Namespace) -> int:
    async def go(c) -> int:
        r = await c.volume_resize(args.name, args.size, wait=args.timeout)
        if args.json:
            print_json(r)
            return 0
        gib = f"{r['size'] / (1 << 30):g} GiB"
        st = r["status"]
        if st == "unchanged":
            print(f"volume {args.name} is {gib} already")
        elif st == "recorded":
            print(f"volume {args.name} is {gib} from its next mount (no live host has it mounted now)")
        else:
            print(f"volume {args.name} is {gib}: host {r['host']}: {r.get('note') or 'grown online'}")
        return 0
    return run_client(args, go)


def cmd_snapshot(args: argparse.Namespace) -> int:
    async def go(c) -> int:
        if args.snapcmd == "ls":
            v = await c.volume_get(args.volume)
            snaps = v.get("snapshots") or {}
            if args.json:
                print_json(snaps)
                return 0
            rows = [[name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created"])),
                     f"{s['position'][0]}/{s['position'][1]}"] for name, s in sorted(snaps.items())]
            table(rows, ["SNAPSHOT", "CREATED", "POSITION"])
            return 0
        t0 = time.monotonic()
        if args.snapcmd == "create":
            r = await c.snapshot_create(args.volume, args.snap)
            print(f"snapshot {args.volume}@{args.snap} created by host {r['host']} at journal position "
                  f"{r['position'][0]}/{r['position'][1]} in {time.monotonic() - t0:.2f}s")
        else:
            r = await c.snapshot_rm(args.volume, args.snap)
            print(f"snapshot {args.volume}@{args.snap} removed; the next GC frees what only it kept")
        return 0
    return run_client(args, go)


# ------------------------------------------------------------ hosts/status
def cmd_hosts_ls(args: argparse.Namespace) -> int:
    async def go(c) -> int:
        hosts = await c.host_list()
        if args.json:
            print_json(hosts)
            return 0
        rows = [[h["host_id"], h["address"] or "-", "alive" if h["alive"] else "DOWN",
                 "-" if h["last_heartbeat_age"] is None else f"{h['last_heartbeat_age']:.1f}s ago",
                 str(len(h["volumes"])), h["version"] or "-"] for h in hosts]
        table(rows, ["HOST", "ADDRESS", "STATE", "HEARTBEAT", "VOLUMES", "VERSION"])
        return 0
    return run_client(args, go)


def cmd_status(args: argparse.Namespace) -> int:
    async def go(c) -> int:
        st = await c.status()
        if args.json:
            print_json(st)
            return 0
        alive = sum(h["alive"] for h in st["hosts"])
        print(f"control {c.addr}: {len(st['hosts'])} host(s), {alive} alive; {len(st['volumes'])} volume(s); "
              f"lease TTL {st['ttl']:g}s, heartbeat {st['heartbeat']:g}s\n")
        table([[h["host_id"], "alive" if h["alive"] else "DOWN", str(len(h["volumes"]))] for h in st["hosts"]],
               ["HOST", "STATE", "VOLUMES"])
        print()
        rows = []
        for v in st["volumes"]:
            lease = v["lease"] or {}
            owner = lease.get("host") or "-"
            if lease and not lease["alive"]:
                owner += " (expired)"
            rows.append([v["name"], owner, "-" if lease.get("epoch") is None else str(lease["epoch"]),
                         v["durability"], lag(lease.get("upload_lag_s")),
                         v["move"]["to"] if v.get("move") else ""])
        table(rows, ["VOLUME", "OWNER", "EPOCH", "DURABILITY", "UPLOAD LAG", "MOVING TO"])
        if st.get("removals"):
            print()
            table([[r["name"], r["root"], r["host"], _removal_state(r)] for r in st["removals"]],
                   ["REMOVED VOLUME", "STORE ROOT", "HOST", "PROGRESS"])
        return 0
    return run_client(args, go)


# ------------------------------------------------------------------ parser
def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `control`, `volume`, `snapshot`, `hosts` and `status` to the top-level parser's subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    ctl = sub.add_parser("control", help="run the control service",
                         description="The control service: volumes, hosts, leases.",
                         epilog=EXAMPLES_SERVE, formatter_class=raw)
    cs = ctl.add_subparsers(dest="ctlcmd", required=True, parser_class=type(ctl))
    s = cs.add_parser("serve", help="serve the control API", description="Serve the control API over TCP.",
                      epilog=EXAMPLES_SERVE, formatter_class=raw)
    s.add_argument("--listen", default="0.0.0.0:7450", metavar="ADDR", help="HOST:PORT (default 0.0.0.0:7450)")
    state.add_state_args(s)
    s.add_argument("--token-file", metavar="FILE", help=f"cluster token file (default ${ENV_TOKEN}, "
                   f"${ENV_TOKEN_FILE} or {DEFAULT_TOKEN_FILE})")
    s.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    s.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")
    s.add_argument("--tls-client-ca", metavar="FILE",
                   help="require client certificates signed by this CA (mutual TLS; the token "
                        "becomes optional)")
    s.add_argument("--lease-ttl", type=float, default=10.0, metavar="S",
                   help="seconds without heartbeat after which a host's leases expire (default 10)")
    s.add_argument("--heartbeat", type=float, default=2.0, metavar="S",
                   help="heartbeat period agents are told to use (default 2)")
    add_metrics_arg(s)
    s.add_argument("--http", metavar="ADDR",
                   help="serve the live status page at http://ADDR/ (https with --tls-cert), e.g. "
                        "127.0.0.1:7451; it shows the cluster only to those holding the token")
    s.add_argument("--http-read-token-file", metavar="FILE",
                   help="a read-only token the status page also accepts (it can read status, nothing else)")
    s.set_defaults(fn=cmd_serve)
    state.register(cs)

    vol = sub.add_parser("volume", help="manage cluster volumes (via the control service)",
                         description="Create, list, inspect, move, remove, export and import volumes.",
                         epilog=EXAMPLES_VOLUME, formatter_class=raw)
    vs = vol.add_subparsers(dest="volcmd", required=True, parser_class=type(vol))
    backup.register(vs)
    from control.validate import known_volume_options
    c = vs.add_parser("create", help="record a new volume", description="Record a new volume at the "
                      "control service (idempotent when identical). The agent formats it on the store "
                      "when Docker first uses it.", formatter_class=raw,
                      epilog="options (-o):\n" + "\n".join(f"  {k}: {v}" for k, v in known_volume_options().items())
                      + "\n\n" + EXAMPLES_VOLUME)
    c.add_argument("name", metavar="NAME")
    c.add_argument("-o", "--option", action="append", metavar="K=V", help="volume option (repeatable)")
    c.add_argument("--label", action="append", metavar="K=V", help="label (repeatable)")
    c.add_argument("--from", dest="source", metavar="VOLUME[@SNAP|@TIME]",
                   help="create it as a clone of a snapshot (VOLUME@SNAP) or a moment (VOLUME@2026-11-29T10:15:00Z, "
                        "VOLUME@-15m) of another volume; same as -o from=...")
    c.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="how long to wait for an agent to make a clone (default 120)")
    client_args(c)
    c.set_defaults(fn=cmd_volume_create)
    ls = vs.add_parser("ls", help="list volumes with owner, epoch and upload lag")
    client_args(ls)
    ls.set_defaults(fn=cmd_volume_ls)
    i = vs.add_parser("inspect", help="show one volume: durability, owner, epoch, upload lag")
    i.add_argument("name", metavar="NAME")
    client_args(i)
    i.set_defaults(fn=cmd_volume_inspect)
    r = vs.add_parser("rm", help="remove a volume and delete its data (refused while a live host holds it)",
                      description="Remove a volume: a live agent fences it in the store (no stale owner "
                      "can commit, no host can mount it; the name is free at once, and a volume created "
                      "under it again starts empty), then deletes every object of it in the background, "
                      "resuming after any crash. `ferry volume ls` shows the progress.",
                      formatter_class=raw)
    r.add_argument("name", metavar="NAME")
    r.add_argument("--wait", action="store_true", help="wait until every object is deleted (progress bar "
                   "on a terminal)")
    r.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for an agent to fence the volume (default: %(default)s)")
    client_args(r)
    r.set_defaults(fn=cmd_volume_rm)
    m = vs.add_parser("move", help="ask the owner to hand a volume over to another host",
                      description="Ask the volume's owner to commit everything and release it for HOST. "
                                  "Refused (exit 1) when containers on the owner use it.",
                      epilog="example:\n  ferry volume move pgdata --to host-b", formatter_class=raw)
    m.add_argument("name", metavar="NAME")
    m.add_argument("--to", required=True, metavar="HOST", help="host id that should get the volume")
    m.add_argument("--wait", type=float, default=30.0, metavar="S", help="seconds to wait for the owner (default 30)")
    client_args(m)
    m.set_defaults(fn=cmd_volume_move)
    rz = vs.add_parser("resize", help="grow a layout=block volume (online where it is mounted)",
                       description="Give a layout=block volume a larger size. The host that has it mounted "
                                   "grows it at once, while containers use it: the image, the loop device, "
                                   "then XFS (xfs_growfs) or ext4 (resize2fs; online only with "
                                   "CAP_SYS_RESOURCE, else at its next mount). Not mounted anywhere: the size "
                                   "applies at its next mount, on any host. Volumes only grow.",
                       epilog="example:\n  ferry volume resize pgdata 50G", formatter_class=raw)
    rz.add_argument("name", metavar="NAME")
    rz.add_argument("size", metavar="SIZE", help="the new size, e.g. 50G (rounded down to 4 KiB)")
    rz.add_argument("--timeout", type=float, default=120.0, metavar="S",
                    help="how long to wait for the host that has it mounted (default 120)")
    client_args(rz)
    rz.set_defaults(fn=cmd_volume_resize)

    sn = sub.add_parser("snapshot", help="create, list and remove volume snapshots",
                        description="A snapshot is a named, consistent, read-only state of a volume that "
                                    "costs metadata only. `create` runs on the host that has the volume "
                                    "mounted (it commits what was written first), else on any live host; "
                                    "the control service records it.",
                        epilog="examples:\n  ferry snapshot create pgdata before-upgrade\n"
                               "  ferry snapshot ls pgdata\n  ferry snapshot rm pgdata before-upgrade",
                        formatter_class=raw)
    sns = sn.add_subparsers(dest="snapcmd", required=True, parser_class=type(sn))
    for verb, text in (("create", "snapshot a volume now"), ("rm", "remove a snapshot")):
        c = sns.add_parser(verb, help=text)
        c.add_argument("volume", metavar="VOLUME")
        c.add_argument("snap", metavar="SNAP")
        client_args(c)
        c.set_defaults(fn=cmd_snapshot)
    ls = sns.add_parser("ls", help="list a volume's snapshots")
    ls.add_argument("volume", metavar="VOLUME")
    client_args(ls)
    ls.set_defaults(fn=cmd_snapshot)

    hosts = sub.add_parser("hosts", help="list cluster hosts", description="Hosts known to the control service.")
    hs = hosts.add_subparsers(dest="hostcmd", required=True, parser_class=type(hosts))
    hl = hs.add_parser("ls", help="list hosts with liveness and volume count")
    client_args(hl)
    hl.set_defaults(fn=cmd_hosts_ls)

    st = sub.add_parser("status", help="cluster at a glance: hosts, volumes, owners, epochs, upload lag",
                        description="Cluster at a glance.",
                        epilog="example:\n  FERRY_CONTROL=10.0.0.1:7450 FERRY_TOKEN=... ferry status",
                        formatter_class=raw)
    client_args(st)
    st.set_defaults(fn=cmd_status)
