"""The rows of ``gitorch nodes --format json`` (and ``GET /api/v1/nodes``): each node's
driver, condition, capacity, what its replicas request, engine and ingress."""

from __future__ import annotations

from typing import Any

from gitorch.live.model import LiveNode
from gitorch.manifests.quantities import format_cpu, format_memory
from gitorch.readmodel.allocation import allocation
from gitorch.readmodel.cluster import ClusterView


def nodes_json(view: ClusterView) -> list[dict[str, Any]]:
    """One row per node of ``view`` (sorted by name), as `gitorch nodes --format json`."""
    used = allocation(view.live)
    draining = {r.name for r in view.store.list_nodes() if r.draining} if view.store else set()
    rows = []
    for name, node in sorted(view.live.nodes.items()):
        alloc = used[name]
        rows.append(
            {
                "name": name,
                "driver": node.driver,
                "condition": "Ready" if node.ready else "NotReady",
                "unschedulable": node.unschedulable or name in draining,
                "draining": name in draining,
                "message": node.message,
                "address": node.address,
                "labels": dict(node.labels),
                "taints": [{"key": k, "value": v, "effect": e} for k, v, e in node.taints],
                "capacity": {
                    "cpu": format_cpu(node.cpu_millis),
                    "memory": format_memory(node.memory_bytes),
                },
                "allocated": {
                    "cpu": format_cpu(alloc["cpu"]),
                    "memory": format_memory(alloc["memory"]),
                },
                "allocatable": {
                    "cpu": format_cpu(max(0, node.cpu_millis - alloc["cpu"])),
                    "memory": format_memory(max(0, node.memory_bytes - alloc["memory"])),
                },
                "replicas": alloc["replicas"],
                "limits": node.limits,
                "engine": {
                    "version": node.version or None,
                    "transport": node.transport or None,
                    "rttMs": round(node.rtt_ms, 2) if node.rtt_ms is not None else None,
                },
                "ingress": _ingress_json(node),
            }
        )
    return rows


def _ingress_json(node: LiveNode) -> dict[str, Any] | None:
    """A remote host's ingress: its mode and the container seen there (None: the node
    shares the daemon's host, whose data plane serves it)."""
    if node.ingress_mode == "never":
        return None
    seen = node.ingress
    return {
        "mode": node.ingress_mode,
        "address": node.address,
        "status": seen.status if seen is not None else None,
        "image": seen.image if seen is not None else None,
    }
