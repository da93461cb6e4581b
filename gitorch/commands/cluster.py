"""Opening the live side for a command: the store, the nodes, their runtimes."""

from __future__ import annotations

import argparse

from gitorch.commands.common import add_runtime_option, open_store, secrets_dir_of, state_dir
from gitorch.live import observe
from gitorch.live.inventory import cluster_identity, open_runtimes
from gitorch.readmodel.cluster import ClusterView, registered_targets

__all__ = ["ClusterView", "add_runtime_option", "open_view"]


def open_view(args: argparse.Namespace) -> ClusterView:
    """Observe the cluster of ``--state`` without taking the daemon lock."""
    state = state_dir(args)
    store = open_store(args, readonly=True)
    targets = registered_targets(store, getattr(args, "runtime", None))
    runtimes = open_runtimes(targets, state, secrets_dir=secrets_dir_of(args))
    live = observe(targets, runtimes, cluster_identity(store, state, create=False), store)
    return ClusterView(store, targets, runtimes, live, state)
