"""Opening the live side for a command: the store, the nodes, their runtimes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from gitorch.commands.common import state_dir
from gitorch.live import LiveState, NodeTarget, default_node, observe
from gitorch.live.inventory import (
    choose_default_driver,
    existing_cluster_name,
    open_runtimes,
)
from gitorch.runtime.base import Runtime
from gitorch.state import StateStore
from gitorch.state.layout import STATE_DB


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        default=None,
        choices=("docker", "process"),
        help="default node driver when the repo declares no Node "
        "(default: docker if a Docker engine answers, else process)",
    )


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


def open_view(args: argparse.Namespace) -> ClusterView:
    """Observe the cluster of ``--state`` without taking the daemon lock."""
    state = state_dir(args)
    store = StateStore(state, readonly=True) if (state / STATE_DB).exists() else None
    targets = registered_targets(store, getattr(args, "runtime", None))
    runtimes = open_runtimes(targets, state)
    live = observe(targets, runtimes, existing_cluster_name(state), store)
    return ClusterView(store, targets, runtimes, live, state)
