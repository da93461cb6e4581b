"""What a read-only reader sees of a cluster: the store, the nodes, their runtimes, the live
state; and which nodes the store knows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from gitorch.live import LiveState, NodeTarget, default_node, node_targets
from gitorch.live.inventory import applied_nodes, choose_default_driver, pool_targets
from gitorch.runtime.base import Runtime

if TYPE_CHECKING:
    from gitorch.state import StateStore


def registered_targets(store: StateStore | None, default_driver: str | None) -> list[NodeTarget]:
    """The applied Nodes; else the nodes the store knows (registered by apply/daemon from
    Git); else the local node. Plus the nodes NodePools made."""
    made = pool_targets(store.list_node_pools()) if store is not None else []
    pooled = {t.name for t in made}
    applied = applied_nodes(store)
    if applied:
        return node_targets(applied, "process") + made
    records = [r for r in store.list_nodes() if r.name not in pooled] if store is not None else []
    if records:
        return [
            NodeTarget(
                name=r.name,
                driver=r.driver,
                endpoint=r.endpoint or None,
                labels=MappingProxyType({**r.labels, "node": r.name}),
            )
            for r in records
        ] + made
    return [default_node(choose_default_driver(default_driver))] + made


@dataclass
class ClusterView:
    """What a read-only command sees: store (None before the first apply) and live state."""

    store: StateStore | None
    targets: list[NodeTarget]
    runtimes: dict[str, Runtime]
    live: LiveState
    state_dir: Path | None = None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
