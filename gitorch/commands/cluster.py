"""Opening the live side for a command: the store, the nodes, their runtimes."""

from __future__ import annotations

import argparse

from gitorch.commands.common import secrets_dir_of, state_dir
from gitorch.live import observe
from gitorch.live.inventory import existing_cluster_name, open_runtimes
from gitorch.readmodel.cluster import ClusterView, registered_targets
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


def open_view(args: argparse.Namespace) -> ClusterView:
    """Observe the cluster of ``--state`` without taking the daemon lock."""
    state = state_dir(args)
    store = StateStore(state, readonly=True) if (state / STATE_DB).exists() else None
    targets = registered_targets(store, getattr(args, "runtime", None))
    runtimes = open_runtimes(targets, state, secrets_dir=secrets_dir_of(args))
    live = observe(targets, runtimes, existing_cluster_name(state), store)
    return ClusterView(store, targets, runtimes, live, state)
