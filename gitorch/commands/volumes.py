"""``gitorch volumes``: every Volume, the node it lives on, its mode, size, users and phase.

``--reset NAME`` forgets a volume that went missing (removed outside gitorch): the next
pass makes it anew, empty, and its users start again. gitorch never does that by itself,
since the data is gone and its users would start on nothing.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from rich.markup import escape
from rich.table import Table

from gitorch.commands.cluster import add_runtime_option
from gitorch.commands.common import (
    add_format_option,
    add_state_option,
    local_actor,
    print_json,
    require_state,
    state_location,
    stdout,
)
from gitorch.commands.nodes import open_nodes_view
from gitorch.commands.remote import add_token_option, ask_message, fetch_rows
from gitorch.errors import GitorchError
from gitorch.readmodel.volumes import SIZE_NOTE, check_resettable, reset_message, volumes_json
from gitorch.state import StateStore

EXAMPLE = """example:
  gitorch volumes
  gitorch volumes --format json
  gitorch volumes --reset pgdata      # a missing volume: make it anew, empty
  gitorch volumes --server https://deploy.example:7420
  gitorch volumes --reset pgdata --server https://deploy.example:7420
"""

_PHASE_STYLE = {
    "Bound": "green",
    "Pending": "cyan",
    "Missing": "red",
    "Released": "yellow",
    "Deleting": "yellow",
    "Unknown": "red",
    "Unrecorded": "yellow",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "volumes",
        help="volumes: node, access mode, size, users, phase; --reset a missing one",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", help="show this volume only")
    parser.add_argument(
        "--reset",
        metavar="NAME",
        help="forget a missing volume, so the next pass makes it anew (empty)",
    )
    add_state_option(parser)
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="ask a running daemon (its HTTP API) instead of reading --state: its volumes as "
        "it last observed them (--reset: the daemon resets it, with the API's write role)",
    )
    add_token_option(parser)
    add_runtime_option(parser)
    add_format_option(parser, "json")
    parser.set_defaults(run=run)


def _observed(args: argparse.Namespace) -> list[dict[str, Any]]:
    view = open_nodes_view(args)
    try:
        return volumes_json(view.live)
    finally:
        view.close()


def _reset(args: argparse.Namespace) -> int:
    require_state(state_location(args))
    view = open_nodes_view(args)
    try:
        check_resettable(volumes_json(view.live), args.reset)
    finally:
        view.close()
    actor = local_actor()
    message = reset_message(args.reset)
    with StateStore(state_location(args)) as store:
        store.reset_volume(args.reset, f"{message} (by {actor.removeprefix('user:')})", actor)
    stdout().print(escape(message))
    return 0


def _reset_on_server(args: argparse.Namespace) -> int:
    """``POST /api/v1/volumes/NAME/reset``: the daemon checks and writes it."""
    message = ask_message(args, f"/api/v1/volumes/{quote(args.reset, safe='')}/reset")
    stdout().print(escape(message or reset_message(args.reset)))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.reset:
        return _reset_on_server(args) if args.server else _reset(args)
    # A daemon's status document holds these rows (``volumes``).
    rows = fetch_rows(args, "/api/v1/status", "volumes") if args.server else _observed(args)
    if args.name:
        rows = [r for r in rows if r["name"] == args.name]
        if not rows:
            raise GitorchError(f"no volume named {args.name!r}")
    if args.format == "json":
        print_json({"volumes": rows})
        return 0
    if not rows:
        stdout().print("no volumes")
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("VOLUME", "NODE", "MODE", "SIZE", "USERS", "PHASE", "BACKEND"):
        table.add_column(column, no_wrap=column in ("VOLUME", "PHASE"))
    for row in rows:
        style = _PHASE_STYLE.get(row["phase"], "")
        table.add_row(
            escape(row["name"]),
            escape(row["node"] or "-"),
            row["accessMode"],
            row["size"] or "-",
            escape(", ".join(row["users"]) or "-"),
            f"[{style}]{row['phase']}[/]" if style else row["phase"],
            escape(row["backend"]),
        )
    stdout().print(table)
    if any(row["size"] for row in rows):
        stdout().print(f"[dim]sizes are {SIZE_NOTE} (see docs/architecture.md, Storage)[/]")
    for row in rows:
        if row["phase"] == "Missing":
            stdout().print(
                f"[red]{escape(row['name'])}:[/] removed from {escape(row['node'] or '-')} outside "
                f"gitorch; its users wait. `gitorch volumes --reset {escape(row['name'])}` makes "
                "it anew, empty"
            )
    return 0
