"""What a read-only reader sees of a cluster: the store, the nodes, their runtimes, the live
state; and which nodes the store knows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from gitorch.live import LiveState, NodeTarget, default_node
from gitorch.live.inventory import choose_default_driver
from gitorch.runtime.base import Runtime
from gitorch.state import StateStore


def registered_targets(store: StateStore | None, default_driver: str | None) -> list[NodeTarget]:
    """Nodes the store knows (registered by apply/daemon from Git); else the local node."""
    records = store.list_nodes() if store is not None else []
    if records:
        return [
            NodeTarget(
                name=r.name,
                driver=r.driver,
                endpoint=r.endpoint or None,
                labels=MappingProxyType({**r.labels, "node": r.name}),
            )
            for r in records
        ]
    return [default_node(choose_default_driver(default_driver))]


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
