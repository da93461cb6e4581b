"""Service discovery for replicas: Kubernetes-style environment variables.

A replica of a service that ``dependsOn: [api]`` gets ``API_SERVICE_HOST`` and
``API_SERVICE_PORT``: where ``api``'s stable endpoint is, as seen from *that replica*,
always through the ingress of the replica's own host (stable across rollouts and moves):

* on a remote host (a node with an ingress of its own): the host's address. Inside a
  container that is the host itself (the bridge's gateway routes to it), where the
  ingress listens with host networking;
* in a container on the daemon's own host: the name ``api.gitorch.internal``, which the
  container resolves (an ``/etc/hosts`` entry) to Docker's ``host-gateway``, the host as
  containers see it. 127.0.0.1 would be the container itself. The daemon's ingress must
  listen there too: ``--lb-host 0.0.0.0`` (or the bridge's address);
* a process replica on the daemon's host: the daemon's ingress address (``--advertise-host``).

Containers also get ``<dep>.gitorch.internal`` names for their remote host's ingress, so a
configuration may name its dependencies instead of reading the variables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

#: The domain of the names containers resolve to their host's ingress.
DOMAIN = "gitorch.internal"
#: Docker's name for the host as its containers reach it (``--add-host x:host-gateway``).
HOST_GATEWAY = "host-gateway"


def env_prefix(service: str) -> str:
    """``shop-api`` -> ``SHOP_API`` (names are DNS labels: only [a-z0-9-])."""
    return re.sub(r"[^A-Z0-9]", "_", service.upper())


def service_env(endpoints: Mapping[str, tuple[str, int]]) -> dict[str, str]:
    """``{"api": ("127.0.0.1", 8001)}`` -> ``{"API_SERVICE_HOST": ..., "API_SERVICE_PORT": ...}``."""
    env: dict[str, str] = {}
    for service, (host, port) in sorted(endpoints.items()):
        prefix = env_prefix(service)
        env[f"{prefix}_SERVICE_HOST"] = host
        env[f"{prefix}_SERVICE_PORT"] = str(port)
    return env


@dataclass(frozen=True)
class Discovery:
    """What a replica is given: its env, and the names its container resolves (name ->
    address, or :data:`HOST_GATEWAY`)."""

    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    hosts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1", "") or host.startswith("127.")


def discovery_for(
    ports: Mapping[str, int],
    *,
    host_ingress: str | None,
    local_ingress: str,
    container: bool,
) -> Discovery:
    """The discovery of one replica (see the module docstring). ``ports``: each exposed
    dependency's ``expose.port``; ``host_ingress``: the address of the replica's remote
    host's ingress (None: it runs on the daemon's host); ``local_ingress``: the daemon's
    ingress address; ``container``: the replica runs in a container."""
    if not ports:
        return Discovery()
    names = {service: f"{service}.{DOMAIN}" for service in ports}
    if host_ingress is not None:
        where = dict.fromkeys(ports, host_ingress)
        hosts = {names[s]: host_ingress for s in ports} if container else {}
    elif container and _loopback(local_ingress):
        where = dict(names)
        hosts = {names[s]: HOST_GATEWAY for s in ports}
    else:
        where = dict.fromkeys(ports, local_ingress)
        hosts = {names[s]: local_ingress for s in ports} if container else {}
    env = service_env({s: (where[s], port) for s, port in ports.items()})
    return Discovery(MappingProxyType(env), MappingProxyType(hosts))


def unreachable_from_local_containers(lb_host: str, container_nodes: Sequence[str]) -> str | None:
    """Why the containers of ``container_nodes`` (Docker nodes on the daemon's own host)
    cannot reach the endpoints when the daemon's ingress listens on ``lb_host``; None
    when they can. Their dependencies resolve to Docker's ``host-gateway`` (the bridge's
    address), where a loopback-only ingress does not listen."""
    if not container_nodes or not (lb_host in ("localhost", "::1") or lb_host.startswith("127.")):
        return None
    nodes = ", ".join(sorted(container_nodes))
    return (
        f"the endpoints listen on {lb_host} only: containers on this host (node {nodes}) "
        "cannot reach the services they depend on (127.0.0.1 inside a container is the "
        "container itself; their <NAME>_SERVICE_HOST is the Docker bridge's gateway). "
        "Start the daemon with --lb-host 0.0.0.0 (every address) or the bridge's address "
        "(docker0, usually 172.17.0.1)"
    )
