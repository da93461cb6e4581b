"""``gitorch drain NODE`` / ``gitorch drain --undo NODE``: move replicas off a node.

Draining cordons the node (nothing new is placed there) and the reconciler moves its
replicas to other nodes through each service's own strategy, so maxSurge and
maxUnavailable hold. ``--undo`` makes the node schedulable again (replicas already moved
stay where they are). The daemon picks the change up at its next pass.
"""

from __future__ import annotations

import argparse

from rich.markup import escape

from gitorch.commands.common import (
    add_state_option,
    has_state,
    local_actor,
    looked_in,
    state_location,
    stdout,
)
from gitorch.commands.remote import add_token_option, ask_message
from gitorch.errors import GitorchError
from gitorch.state import RecordNotFound, StateStore

EXAMPLE = """example:
  gitorch drain node-b
  gitorch drain --undo node-b
  gitorch drain node-b --server https://deploy.example:7420
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "drain",
        help="move every replica off a node (through each service's strategy); --undo to stop",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("node", help="the node to drain")
    parser.add_argument(
        "--undo", action="store_true", help="stop draining: the node takes replicas again"
    )
    add_state_option(parser)
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="ask a running daemon (its HTTP API, a write token) instead of writing --state",
    )
    add_token_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.server:
        return _on_server(args)
    location = state_location(args)
    if not has_state(location):
        raise GitorchError(
            f"no state store {looked_in(location, None)}: nothing has been applied there yet"
        )
    with StateStore(location) as store:
        actor = local_actor()

        def write() -> None:
            store.set_draining(args.node, not args.undo)
            store.append_event(
                "node.drain" if not args.undo else "node.uncordon",
                f"{args.node}: {'draining' if not args.undo else 'schedulable again'} "
                f"(by {actor.removeprefix('user:')})",
                actor=actor,
            )

        try:
            # The change and its audit entry, or neither (on etcd tried again if the
            # leader appended to the log meanwhile).
            store.atomic(write)
        except RecordNotFound as exc:
            known = ", ".join(n.name for n in store.list_nodes()) or "none"
            raise GitorchError(f"no node named {args.node!r} (known nodes: {known})") from exc
    verb = "draining: its replicas move to other nodes" if not args.undo else "schedulable again"
    stdout().print(f"node {escape(args.node)} {verb}")
    return 0


def _on_server(args: argparse.Namespace) -> int:
    """``POST /api/v1/nodes/NAME/drain`` (or ``uncordon``): the daemon writes it, with
    the token's name in the audit log, and passes at once."""
    from urllib.parse import quote

    action = "uncordon" if args.undo else "drain"
    message = ask_message(args, f"/api/v1/nodes/{quote(args.node, safe='')}/{action}")
    verb = "draining: its replicas move to other nodes" if not args.undo else "schedulable again"
    stdout().print(escape(message or f"node {args.node} {verb}"))
    return 0
