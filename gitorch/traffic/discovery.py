"""Service discovery for replicas: Kubernetes-style environment variables.

A replica of a service that ``dependsOn: [api]`` gets ``API_SERVICE_HOST`` and
``API_SERVICE_PORT``: the load balancer's endpoint for ``api``, stable across rollouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping


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
