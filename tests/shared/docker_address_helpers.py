"""Where the main Docker engine publishes replicas' ports, found independently of
gitorch's own code (``docker network inspect bridge`` and a bind test), for tests that
check replicas' addresses: the engine's bridge gateway when this host owns it, else
127.0.0.1 (gitorch/runtime/docker.py, ``DockerRuntime._publish_address``)."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import socket
import subprocess
from typing import Any


@functools.cache
def local_docker_publish_host() -> str:
    network = _inspect_bridge()
    configs = network["IPAM"]["Config"] or []
    for config in configs:
        gateway = config.get("Gateway") or ""
        if gateway and ":" not in gateway:
            return gateway if _bindable(gateway) else "127.0.0.1"
    # An engine's first start leaves the default bridge's gateway unstated: it is the
    # address of the bridge's interface (``ip -4 addr``), as long as it is in the subnet.
    interface = (network.get("Options") or {}).get("com.docker.network.bridge.name")
    address = bridge_interface_address(interface) if interface else None
    subnets = [c["Subnet"] for c in configs if ":" not in (c.get("Subnet") or ":")]
    if address and any(
        ipaddress.ip_address(address) in ipaddress.ip_network(n, strict=False) for n in subnets
    ):
        return address if _bindable(address) else "127.0.0.1"
    return "127.0.0.1"


def bridge_interface_address(interface: str) -> str | None:
    """The IPv4 address of ``interface`` on this host, by ``ip -4 -o addr show``."""
    done = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", interface],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    found = re.search(r"\sinet (\d+\.\d+\.\d+\.\d+)/", done.stdout)
    return found.group(1) if found else None


def bridge_network() -> dict[str, Any]:
    """``docker network inspect bridge``, as JSON."""
    return _inspect_bridge()


def _inspect_bridge() -> dict[str, Any]:
    done = subprocess.run(
        ["docker", "network", "inspect", "bridge"],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    network: dict[str, Any] = json.loads(done.stdout)[0]
    return network


def _bindable(address: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def replica_address_pattern() -> re.Pattern[str]:
    """``host:port`` of a replica on the local Docker engine or the process driver."""
    hosts = {"127.0.0.1", local_docker_publish_host()}
    return re.compile("^(" + "|".join(re.escape(h) for h in sorted(hosts)) + r"):\d+$")
