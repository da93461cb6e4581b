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
    add_state_option,
    has_state,
    looked_in,
    open_store,
    print_json,
    state_dir,
    state_location,
    stderr,
    stdout,
)
from gitorch.live import node_targets, observe
from gitorch.live.inventory import cluster_identity, open_runtimes
from gitorch.manifests.build import build_node
from gitorch.manifests.model import Node, Origin
from gitorch.manifests.quantities import (
    format_cpu,
    format_memory,
    human_memory,
    parse_memory,
)
from gitorch.readmodel.allocation import allocation
from gitorch.readmodel.cluster import ClusterView
from gitorch.state import StateStore

EXAMPLE = """example:
  gitorch nodes
  gitorch nodes --format json
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
    add_runtime_option(parser)
    add_format_option(parser, "json")
    parser.set_defaults(run=run)


def nodes_json(view: ClusterView) -> list[dict[str, Any]]:
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
            }
        )
    return rows


def applied_nodes(store: StateStore | None) -> list[Node]:
    """The Nodes as last applied from Git (the store's inventory); [] when none or unreadable.

    The store's node registry keeps only name, driver, endpoint and labels; capacity,
    taints and cordon live in the applied Node objects, and ``nodes`` must show those
    (a node's explicit capacity, not the machine's).
    """
    if store is None:
        return []
    nodes: list[Node] = []
    for applied in store.list_applied():
        if applied.kind != "Node":
            continue
        try:
            nodes.append(build_node(applied.spec, Origin("(state store)", 0)))
        except (KeyError, TypeError, ValueError):
            return []  # an entry this version cannot read: fall back to the registry
    return nodes


def open_nodes_view(args: argparse.Namespace) -> ClusterView:
    """Like :func:`open_view`, but with the nodes as applied (capacity, taints, cordon)."""
    state = state_dir(args)
    store = open_store(args, readonly=True)
    nodes = applied_nodes(store)
    if not nodes:
        if store is not None:
            store.close()
        return open_view(args)
    targets = node_targets(nodes, "process")
    runtimes = open_runtimes(targets, state)
    live = observe(targets, runtimes, cluster_identity(store, state, create=False), store)
    return ClusterView(store, targets, runtimes, live, state)


def run(args: argparse.Namespace) -> int:
    location = state_location(args)
    if not has_state(location):
        # Still useful: the node apply or daemon would use here. Say so, on stderr.
        stderr().print(
            f"note: no gitorch state {escape(looked_in(location, None))}: showing the local "
            f"node gitorch would use ({escape(ELSEWHERE_STATE)})"
        )
    view = open_nodes_view(args)
    try:
        rows = nodes_json(view)
    finally:
        view.close()
    if args.format == "json":
        print_json({"nodes": rows})
        return 0
    table = Table(box=None, pad_edge=False)
    for column in (
        "NODE",
        "DRIVER",
        "CONDITION",
        "ADDRESS",
        "CPU (alloc/cap)",
        "MEMORY (alloc/cap)",
        "REPLICAS",
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
        table.add_row(
            escape(row["name"]),
            row["driver"],
            condition,
            row["address"],
            f"{row['allocated']['cpu']}/{row['capacity']['cpu']}",
            f"{human_memory(parse_memory(row['allocated']['memory']))}/"
            f"{human_memory(parse_memory(row['capacity']['memory']))}",
            str(row["replicas"]),
            escape(row["limits"] or "-"),
        )
    stdout().print(table)
    for row in rows:
        if row["message"]:
            stdout().print(f"[red]{escape(row['name'])}:[/] {escape(row['message'])}")
    return 0
