"""``gitorch nodes``: nodes, capacity, allocation, conditions."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from gitorch.commands.cluster import add_runtime_option, open_view
from gitorch.commands.common import (
    ELSEWHERE_STATE,
    add_format_option,
    add_secrets_option,
    add_state_option,
    has_state,
    looked_in,
    open_store,
    print_json,
    secrets_dir_of,
    state_dir,
    state_location,
    stderr,
    stdout,
)
from gitorch.commands.remote import add_token_option, fetch_rows
from gitorch.live import node_targets, observe
from gitorch.live.inventory import applied_nodes, cluster_identity, open_runtimes, pool_targets
from gitorch.manifests.quantities import (
    human_memory,
    parse_memory,
)
from gitorch.readmodel.cluster import ClusterView
from gitorch.readmodel.nodes import nodes_json

EXAMPLE = """example:
  gitorch nodes
  gitorch nodes --format json
  gitorch nodes --server https://deploy.example:7420
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "nodes",
        help="nodes, capacity, allocation, conditions",
        description="List the cluster's nodes with their driver, condition (Ready/NotReady, "
        "cordoned), capacity, the resources requested by the replicas running there, and "
        "the replica count. Exit 0.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_state_option(parser)
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="ask a running daemon (its HTTP API) instead of reading --state: its nodes as "
        "it last observed them",
    )
    add_token_option(parser)
    add_runtime_option(parser)
    add_secrets_option(parser)
    add_format_option(parser, "json")
    parser.set_defaults(run=run)


def _observed(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The rows from the state store and the nodes themselves."""
    location = state_location(args)
    if not has_state(location):
        # Still useful: the node apply or daemon would use here. Say so, on stderr.
        stderr().print(
            f"note: no gitorch state {escape(looked_in(location, None))}: showing the local "
            f"node gitorch would use ({escape(ELSEWHERE_STATE)})"
        )
    view = open_nodes_view(args)
    try:
        return nodes_json(view)
    finally:
        view.close()


def open_nodes_view(args: argparse.Namespace) -> ClusterView:
    """Like :func:`open_view`, but with the nodes as applied (capacity, taints, cordon)."""
    state = state_dir(args)
    store = open_store(args, readonly=True)
    nodes = applied_nodes(store)
    if not nodes:
        if store is not None:
            store.close()
        return open_view(args)
    # The nodes NodePools made are nodes too (as registered_targets adds them).
    made = pool_targets(store.list_node_pools()) if store is not None else []
    targets = node_targets(nodes, "process") + made
    runtimes = open_runtimes(targets, state, secrets_dir=secrets_dir_of(args))
    live = observe(targets, runtimes, cluster_identity(store, state, create=False), store)
    return ClusterView(store, targets, runtimes, live, state)


def run(args: argparse.Namespace) -> int:
    rows = fetch_rows(args, "/api/v1/nodes", "nodes") if args.server else _observed(args)
    if args.format == "json":
        print_json({"nodes": rows})
        return 0
    table = Table(box=None, pad_edge=False)
    for column in (
        "NODE",
        "DRIVER",
        "CONDITION",
        "ADDRESS",
        "ENGINE",
        "TLS",
        "RTT",
        "CPU (alloc/cap)",
        "MEMORY (alloc/cap)",
        "REPLICAS",
        "INGRESS",
        "LIMITS",
    ):
        # The condition ("NotReady,Draining") must never be cut to an ellipsis on a
        # narrow console: the long headers wrap instead.
        table.add_column(column, no_wrap=column in ("NODE", "CONDITION"))
    for row in rows:
        condition = "[green]Ready[/]" if row["condition"] == "Ready" else "[red]NotReady[/]"
        if row["draining"]:
            condition += ",[yellow]Draining[/]"
        elif row["unschedulable"]:
            condition += ",[yellow]SchedulingDisabled[/]"
        engine = row["engine"]
        rtt = engine["rttMs"]
        ingress = row["ingress"]
        table.add_row(
            escape(row["name"]),
            row["driver"],
            condition,
            row["address"],
            escape(engine["version"] or "-"),
            escape(engine["transport"] or "-"),
            f"{rtt:.1f}ms" if rtt is not None else "-",
            f"{row['allocated']['cpu']}/{row['capacity']['cpu']}",
            f"{human_memory(parse_memory(row['allocated']['memory']))}/"
            f"{human_memory(parse_memory(row['capacity']['memory']))}",
            str(row["replicas"]),
            escape(f"{ingress['status'] or 'none'} ({ingress['mode']})" if ingress else "-"),
            escape(row["limits"] or "-"),
        )
    stdout().print(table)
    for row in rows:
        if row["message"]:
            stdout().print(f"[red]{escape(row['name'])}:[/] {escape(row['message'])}")
    return 0
