"""Where the main Docker engine publishes replicas' ports, found independently of
gitorch's own code (``docker network inspect bridge`` and a bind test), for tests that
check replicas' addresses: the engine's bridge gateway when this host owns it, else
127.0.0.1 (gitorch/runtime/docker.py, ``DockerRuntime._publish_address``)."""

from __future__ import annotations

import functools
import json
import re
import socket
import subprocess


@functools.cache
def local_docker_publish_host() -> str:
    done = subprocess.run(
        ["docker", "network", "inspect", "bridge"],  # noqa: S607
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    for config in json.loads(done.stdout)[0]["IPAM"]["Config"] or []:
        gateway = config.get("Gateway") or ""
        if gateway and ":" not in gateway:
            try:
                with socket.socket() as probe:
                    probe.bind((gateway, 0))
            except OSError:
                break
            return str(gateway)
    return "127.0.0.1"


def replica_address_pattern() -> re.Pattern[str]:
    """``host:port`` of a replica on the local Docker engine or the process driver."""
    hosts = {"127.0.0.1", local_docker_publish_host()}
    return re.compile("^(" + "|".join(re.escape(h) for h in sorted(hosts)) + r"):\d+$")
