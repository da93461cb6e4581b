"""What the replicas running on each node ask for (their services' resource requests)."""

from __future__ import annotations

from typing import Any

from gitorch.live.model import LiveState
from gitorch.manifests.quantities import parse_cpu, parse_memory


def allocation(live: LiveState) -> dict[str, dict[str, int]]:
    """Requests of the replicas on each node (from the spec each service was applied with):
    ``{"cpu": millicores, "memory": bytes, "replicas": count}`` per node."""
    out = {name: {"cpu": 0, "memory": 0, "replicas": 0} for name in live.nodes}
    for service in live.services.values():
        requests: dict[str, Any] = {}
        if service.applied is not None:
            requests = (
                service.applied.canonical.get("spec", {}).get("resources", {}).get("requests", {})
            )
        for replica in service.replicas:
            if replica.state not in ("running", "created") or replica.node not in out:
                continue
            slot = out[replica.node]
            slot["replicas"] += 1
            if "cpu" in requests:
                slot["cpu"] += parse_cpu(requests["cpu"])
            if "memory" in requests:
                slot["memory"] += parse_memory(requests["memory"])
    return out
