"""`ferry agent` subcommands: `ferry agent serve` runs the per-host agent."""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from agent.defaults import DEFAULT_IN_USE_WAIT, MAX_IN_USE_WAIT
from cli.common import (
    ENV_CONTROL,
    add_metrics_arg,
    add_tls_client_args,
    client_tls,
    metrics_addr,
    read_token,
    serve_metrics,
)
from cli.errors import Failure, UsageError

log = logging.getLogger("ferry.agent")

EXAMPLE = """\
example (one host of a cluster; token shared with `ferry control serve`):
  ferry agent serve --control 10.0.0.1:7450 --host-id node-a --token-file /etc/ferry/token \\
      --store 's3://ferry-volumes?endpoint=http://10.0.0.9:9000&region=us-east-1' \\
      --cache-dir /var/cache/ferry
  docker volume create -d ferry pgdata
  docker run --rm -v pgdata:/var/lib/postgresql/data postgres

The agent serves Docker's volume plugin API on --socket, starts one `ferry fs mount`
daemon per mounted volume (<mount-root>/<volume>, cache <cache-dir>/<volume>), and keeps
its mount IDs in <state-dir>/state.json. Restarting the agent does not unmount anything:
the daemons run on and are adopted by the next agent.
The cluster token comes from --token-file, else $FERRY_TOKEN, $FERRY_TOKEN_FILE or /etc/ferry/token.
"""


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from agent.docker_engine import parse_docker_host
    from agent.service import Agent, AgentConfig
    from control.client import parse_addrs
    from control.leases import Refused, validate_host_id
    from fsd.store import open_store

    args.control = args.control or os.environ.get(ENV_CONTROL)
    if not args.control:
        raise UsageError("--control: give the control service's HOST:PORT (every replica's, comma-separated), "
                         "or set FERRY_CONTROL")
    tls = client_tls(args)
    try:
        parse_addrs(args.control)
        validate_host_id(args.host_id)
    except ValueError as e:
        raise UsageError(f"--control: {e}") from None
    except Refused as e:
        raise UsageError(f"--host-id: {e.message}") from None
    token = read_token(args.token_file)      # the same rules as every control client
    metrics_at = metrics_addr(args.metrics)
    key_dir = Path(args.key_dir).absolute() if args.key_dir else None
    if key_dir is not None and not key_dir.is_dir():
        raise UsageError(f"--key-dir {key_dir}: no such directory (it holds one <name>.key per key name)")
    try:
        open_store(args.store).close()
    except Exception as e:  # noqa: BLE001 - bad URL or unusable store
        raise UsageError(f"--store: {e}") from None
    if not 0 <= args.in_use_wait <= MAX_IN_USE_WAIT:
        raise UsageError(f"--in-use-wait {args.in_use_wait:g}: give 0 to {MAX_IN_USE_WAIT:g} seconds (Docker gives "
                         "a Mount 120 s, and a planned move may take up to 60 of them)")
    try:
        docker_socket = parse_docker_host(args.docker_host or os.environ.get("DOCKER_HOST")
                                          or "unix:///var/run/docker.sock")
    except ValueError as e:
        raise UsageError(f"--docker-host: {e}") from None
    cfg = AgentConfig(control=args.control, host_id=args.host_id, store_url=args.store,
                      cache_dir=Path(args.cache_dir).absolute(), socket=Path(args.socket).absolute(),
                      mount_root=Path(args.mount_root).absolute(), state_dir=Path(args.state_dir).absolute(),
                      token=token, address=args.address or "", tls=tls, key_dir=key_dir,
                      docker_socket=docker_socket, in_use_wait=args.in_use_wait,
                      managed_plugin=args.managed_plugin)
    agent = Agent(cfg)
    serve_metrics(metrics_at, agent.metrics.registry, f"agent {args.host_id}")
    try:
        trio.run(_serve_until_terminated, agent)
    except OSError as e:
        raise Failure(f"agent cannot start: {e}") from None
    except KeyboardInterrupt:
        pass
    if agent.exit_reason:
        raise Failure(f"agent ended: {agent.exit_reason}")
    return 0


async def _serve_until_terminated(agent: Any) -> None:
    """Run the agent until it ends itself or SIGTERM arrives (systemd stopping the service,
    dockerd stopping the managed plugin). SIGTERM must be handled: as a managed plugin the
    agent is the init of its container, and the kernel drops a signal an init did not ask
    for, so Docker would wait 10 s and then kill it. Stopping the agent stops the agent only:
    the daemons of mounted volumes run on (a plugin's die with its container)."""
    import signal

    import trio

    async with trio.open_nursery() as n:
        async def on_sigterm() -> None:
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    log.info("agent: SIGTERM, stopping")
                    n.cancel_scope.cancel()
                    return
        n.start_soon(on_sigterm)
        await agent.run()
        n.cancel_scope.cancel()        # the agent ended itself (agent.exit_reason)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the agent subcommands on the top-level `ferry` parser."""
    ag = sub.add_parser("agent", help="per-host agent: Docker volume plugin and filesystem daemons",
                        description="The per-host ferry agent.", epilog=EXAMPLE,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ags = ag.add_subparsers(dest="agentcmd", required=True, parser_class=type(ag))
    s = ags.add_parser("serve", help="serve the Docker volume plugin API on this host",
                       description="Register with the control service, heartbeat, and serve Docker's "
                                   "volume plugin protocol; start, stop and adopt filesystem daemons.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--control", metavar="ADDR",
                   help="control service HOST:PORT, or every replica's: HOST:PORT,HOST:PORT,... (the agent fails "
                        "over between them; default $FERRY_CONTROL)")
    s.add_argument("--host-id", required=True, metavar="ID", help="this host's unique name in the cluster")
    s.add_argument("--store", required=True, metavar="URL",
                   help="file:///PATH or s3://BUCKET[/PREFIX]?endpoint=URL&region=R (same on every host)")
    s.add_argument("--cache-dir", required=True, metavar="DIR", help="local cache root (one subdirectory per volume)")
    s.add_argument("--socket", default="/run/docker/plugins/ferry.sock", metavar="PATH",
                   help="plugin socket (default /run/docker/plugins/ferry.sock)")
    s.add_argument("--docker-host", metavar="unix:///PATH",
                   help="the local Docker engine's API socket (default $DOCKER_HOST, else "
                        "unix:///var/run/docker.sock; 'none' to leave it alone). The agent makes the engine "
                        "list the ferry plugin as soon as both run, so Swarm can place ferry volumes on this "
                        "node without a manual 'docker volume' command")
    s.add_argument("--in-use-wait", type=float, default=DEFAULT_IN_USE_WAIT, metavar="SECONDS",
                   help="how long a Mount waits for a volume in use on another host to be released before it "
                        f"fails (default {DEFAULT_IN_USE_WAIT:g}; 0: fail at once). Swarm mounts a moved task's "
                        "volume before the old task has stopped")
    s.add_argument("--managed-plugin", action="store_true",
                   help="run as Docker's managed plugin (deploy/plugin/entrypoint.sh sets it): watch that mounts "
                        "under --mount-root still reach the host, refuse Mounts when they do not (after a dockerd "
                        "restart with live-restore), and end once nothing is mounted so dockerd restarts the "
                        "plugin (docs/plugin.md)")
    s.add_argument("--mount-root", default="/var/lib/ferry/mounts", metavar="DIR",
                   help="where volumes are mounted (default /var/lib/ferry/mounts)")
    s.add_argument("--state-dir", default="/var/lib/ferry/agent", metavar="DIR",
                   help="agent state (default /var/lib/ferry/agent)")
    s.add_argument("--key-dir", metavar="DIR",
                   help="keys of encrypted volumes, one <name>.key per key name (docker volume create -d ferry "
                        "-o encryption=aes-256-gcm -o key=NAME; docs/encryption.md)")
    s.add_argument("--token-file", metavar="FILE",
                   help="file holding the cluster token (else $FERRY_TOKEN, $FERRY_TOKEN_FILE or /etc/ferry/token)")
    add_tls_client_args(s.add_argument_group("TLS to the control service"))
    s.add_argument("--address", metavar="ADDR", help="address other hosts see for this host (informational)")
    add_metrics_arg(s)
    s.set_defaults(fn=cmd_serve)
