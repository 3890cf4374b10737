"""Making this host's dockerd name the ferry plugin, so Swarm places ferry
volumes here with no manual step (issue 23).

dockerd finds a legacy plugin (a socket in /run/docker/plugins) lazily: the
first time a request names its driver, or when a volume listing walks every
plugin it can find. Until then `docker info` does not list it under
Plugins.Volume. A Swarm manager places tasks by the plugins each node
reports, so a service with `volume-driver=ferry` stayed pending ("missing
plugin on 1 node") until someone ran a `docker volume` command on every
node by hand. A dockerd restart forgets the plugin again.

So the agent, once it serves its socket, reads `GET /info`. If the plugin
is not listed, it asks dockerd for `GET /volumes`, which makes dockerd
activate every legacy volume plugin it finds (the handshake comes back to
our own socket). It then checks again every `RECHECK_S`. A Swarm node
reports its description to the managers about every 20 s (swarmkit's node
update period), so a node becomes eligible within about half a minute of
its agent starting.

`next_step` decides (pure); `DockerEngine` talks to the engine's API socket
(httpx over a unix socket, on trio).
"""
from __future__ import annotations

import enum
from typing import Any

import httpx

RECHECK_S = 10.0        # while dockerd lists the plugin
RETRY_S = 2.0           # while it does not, or cannot be reached


class Step(enum.Enum):
    LISTED = "listed"           # dockerd names the plugin: nothing to do
    ACTIVATE = "activate"       # reachable, plugin not named: list volumes
    UNREACHABLE = "unreachable"  # no engine answered: try again later


def next_step(volume_plugins: list[str] | None, name: str) -> Step:
    """What to do given `docker info`'s Plugins.Volume (None: no answer)."""
    if volume_plugins is None:
        return Step.UNREACHABLE
    return Step.LISTED if name in volume_plugins else Step.ACTIVATE


def delay_after(step: Step) -> float:
    return RECHECK_S if step is Step.LISTED else RETRY_S


class EngineError(Exception):
    """The engine did not answer, or answered with an error."""


def parse_docker_host(value: str) -> str | None:
    """The unix socket path of a DOCKER_HOST-style value; None for "none"
    (the agent then leaves dockerd alone). ValueError for anything else."""
    if value == "none":
        return None
    if value.startswith("unix://") and len(value) > len("unix://"):
        return value[len("unix://"):]
    raise ValueError(f"{value!r}: give unix:///PATH/TO/docker.sock (the local engine's API socket), "
                     f"or none")


class DockerEngine:
    """The two calls the agent makes to the local engine's API."""

    def __init__(self, socket_path: str, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout

    async def _get(self, path: str) -> Any:
        transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://docker",
                                         timeout=self._timeout) as client:
                r = await client.get(path)
        except httpx.HTTPError as e:
            raise EngineError(f"{type(e).__name__}: {e or 'no answer'}") from None
        if r.status_code != 200:
            raise EngineError(f"GET {path}: HTTP {r.status_code}: {r.text[:200]}")
        try:
            return r.json()
        except ValueError:
            raise EngineError(f"GET {path}: not JSON") from None

    async def volume_plugins(self) -> list[str]:
        """Plugins.Volume of `docker info`: the volume drivers dockerd knows now."""
        info = await self._get("/info")
        if not isinstance(info, dict):
            raise EngineError("GET /info: not a JSON object")
        plugins = (info.get("Plugins") or {}).get("Volume") or []
        return [str(p) for p in plugins]

    async def list_volumes(self) -> None:
        """`docker volume ls`: dockerd activates every legacy volume plugin it finds."""
        await self._get("/volumes")
