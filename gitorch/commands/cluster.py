"""Opening the live side for a command: the store, the nodes, their runtimes."""

from __future__ import annotations

import argparse

from gitorch.commands.common import open_store, state_dir
from gitorch.live import observe
from gitorch.live.inventory import cluster_identity, open_runtimes
from gitorch.readmodel.cluster import ClusterView, registered_targets


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runtime",
        default=None,
        choices=("docker", "process"),
        help="default node driver when the repo declares no Node "
        "(default: docker if a Docker engine answers, else process)",
    )


def open_view(args: argparse.Namespace) -> ClusterView:
    """Observe the cluster of ``--state`` without taking the daemon lock."""
    state = state_dir(args)
    store = open_store(args, readonly=True)
    targets = registered_targets(store, getattr(args, "runtime", None))
    runtimes = open_runtimes(targets, state)
    live = observe(targets, runtimes, cluster_identity(store, state, create=False), store)
    return ClusterView(store, targets, runtimes, live, state)
