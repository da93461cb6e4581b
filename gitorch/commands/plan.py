"""``gitorch plan``: what a merge would change, field by field; changes nothing.

Exit codes follow ``terraform plan -detailed-exitcode``: 0 no changes, 2 changes, 1 error.
"""

from __future__ import annotations

import argparse
import sys

from gitorch.commands.cluster import add_runtime_option
from gitorch.commands.common import (
    add_format_option,
    add_source_options,
    add_state_option,
    read_snapshot,
    state_dir,
    stdout,
)
from gitorch.diff import Plan, compute_plan
from gitorch.diff.render import render_json
from gitorch.errors import ManifestInvalid
from gitorch.live import node_targets, observe
from gitorch.live.inventory import choose_default_driver, existing_cluster_name, open_runtimes
from gitorch.manifests import DesiredState, ManifestLoader
from gitorch.readmodel.cluster import registered_targets
from gitorch.scheduler import LEAST_ALLOCATED, MOST_ALLOCATED
from gitorch.state import StateStore
from gitorch.state.layout import STATE_DB

EXIT_NO_CHANGES = 0
EXIT_CHANGES = 2

EXAMPLE = """example:
  gitorch plan --path examples/repo
  gitorch plan --ref feature/new-api --format markdown > plan.md
  gitorch plan --worktree --path examples/repo --format json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="what would change, field by field, where replicas land, which rollout steps run",
        description="Compare the desired state at --ref (or the working tree) with what is live, "
        "and show every change field by field, where new replicas would be placed, which "
        "rollout steps would run, and drift. Changes nothing. Exit 0 no changes, 2 changes, 1 error.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_options(parser)
    add_state_option(parser)
    add_runtime_option(parser)
    add_format_option(parser, "json", "markdown")
    parser.add_argument(
        "--scoring",
        choices=(LEAST_ALLOCATED, MOST_ALLOCATED),
        default=LEAST_ALLOCATED,
        help="placement scoring: spread load (default) or bin-pack",
    )
    parser.set_defaults(run=run)


def load_desired(args: argparse.Namespace) -> DesiredState:
    snapshot = read_snapshot(args)
    result = ManifestLoader().load(
        snapshot.files,
        revision=snapshot.revision,
        root_path=snapshot.root_path,
        problems=snapshot.problems,
    )
    if result.state is None:
        raise ManifestInvalid(list(result.diagnostics))
    return result.state


def make_plan(args: argparse.Namespace) -> Plan:
    """Desired state from the source, live state from the runtimes and store, then the plan."""
    desired = load_desired(args)
    state = state_dir(args)
    store = StateStore(state, readonly=True) if (state / STATE_DB).exists() else None
    try:
        if desired.nodes:
            targets = node_targets(desired.nodes.values(), choose_default_driver(args.runtime))
        else:
            targets = registered_targets(store, args.runtime)
        live = observe(targets, open_runtimes(targets, state), existing_cluster_name(state), store)
    finally:
        if store is not None:
            store.close()
    return compute_plan(desired, live, scoring=args.scoring)


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    if args.format == "json":
        sys.stdout.write(render_json(plan))
    elif args.format == "markdown":
        from gitorch.diff.render.markdown import render_markdown

        sys.stdout.write(render_markdown(plan))
    else:
        from gitorch.diff.render.text import render_text

        render_text(plan, stdout())
    return EXIT_CHANGES if plan.has_changes else EXIT_NO_CHANGES
