"""``gitorch plan``: what a merge would change, field by field; changes nothing.

Exit codes follow ``terraform plan -detailed-exitcode``: 0 no changes, 2 changes, 1 error.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from gitorch.commands.cluster import add_runtime_option
from gitorch.commands.common import (
    add_format_option,
    add_host_path_option,
    add_secret_options,
    add_source_options,
    add_state_option,
    add_verify_options,
    allowed_host_paths,
    duration,
    escape_codes_around,
    keep_until_exit,
    one_shot_gc,
    open_store,
    reserved_ports,
    resolved_secrets,
    running_daemon,
    secrets_dir_of,
    separate_trees_hint,
    state_dir,
    stdout,
    verified_snapshot,
    write_pieces,
)
from gitorch.commands.remote import add_token_option
from gitorch.decide import decide_pass
from gitorch.decide.cluster import pass_input_of
from gitorch.decide.driver_hint import driver_mismatch
from gitorch.decide.nodes import lost_nodes
from gitorch.decide.vertical import with_vertical
from gitorch.diff import Plan, compute_plan
from gitorch.diff.render import render_json, render_json_pieces
from gitorch.errors import ConfigError, GitorchError, ManifestInvalid
from gitorch.live import node_targets, observe
from gitorch.live.inventory import (
    NodeTarget,
    applied_nodes,
    choose_default_driver,
    cluster_identity,
    leaving_targets,
    open_runtimes,
    pool_targets,
)
from gitorch.live.observe import assess_readiness
from gitorch.manifests import DesiredState, ManifestLoader
from gitorch.manifests.loader import load_desired
from gitorch.readmodel.cluster import registered_targets
from gitorch.scheduler import LEAST_ALLOCATED, MOST_ALLOCATED
from gitorch.secrets import with_applied_digests
from gitorch.state.layout import STATE_DB
from gitorch.traffic.holders import descends_from, own_data_plane, port_holders

EXIT_NO_CHANGES = 0
EXIT_CHANGES = 2

#: Seconds to wait for a daemon's plan (a first plan of thousands of services takes a while).
PLAN_TIMEOUT = 120.0

EXAMPLE = """example:
  gitorch plan --path examples/repo
  gitorch plan --ref feature/new-api --format markdown > plan.md
  gitorch plan --worktree --path examples/repo --format json
  gitorch plan --server https://deploy.example:7420 --ref feature/new-api --format markdown
"""

#: What a plan made by a daemon (``--server``) takes from the daemon, not the command line:
#: its repository and folder, secrets, signature policy, nodes and placement settings.
LOCAL_ONLY = (
    "repo",
    "path",
    "worktree",
    "verify_commits",
    "trusted_keys",
    "allowed_signers",
    "secrets_dir",
    "age_key",
    "state",
    "runtime_dir",
    "runtime",
    "allow_host_path",
    "scoring",
    "node_grace",
)


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
    add_verify_options(parser)
    add_secret_options(parser)
    add_state_option(parser)
    add_runtime_option(parser)
    add_format_option(parser, "json", "markdown")
    add_host_path_option(parser, reads_daemon=True)
    parser.add_argument(
        "--scoring",
        choices=(LEAST_ALLOCATED, MOST_ALLOCATED),
        default=LEAST_ALLOCATED,
        help="placement scoring: spread load (default) or bin-pack",
    )
    parser.add_argument(
        "--node-grace",
        type=duration,
        default=30.0,
        metavar="DURATION",
        help="how long a silent node keeps its replicas before the next pass replaces them "
        "(as the daemon's --node-grace: 30s, 1m, 500ms, 1m30s or seconds; default 30s)",
    )
    remote = parser.add_argument_group("a running daemon's plan")
    remote.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="ask a running daemon (its HTTP API) to plan --ref against what it runs: its "
        "own repository (the ref as of its last fetch), folder, secrets, signature policy "
        "and nodes; only --ref and --format are sent",
    )
    add_token_option(remote)
    parser.set_defaults(
        run=run, local_defaults={dest: parser.get_default(dest) for dest in LOCAL_ONLY}
    )


def desired_of(args: argparse.Namespace) -> DesiredState:
    """The desired state at ``--repo/--ref/--path`` (or the worktree); with
    ``--verify-commits``, only from a commit signed by a trusted key."""
    snapshot, verdict = verified_snapshot(args)
    if verdict is not None and not verdict.trusted:
        from gitorch.sources.verify import CommitNotTrusted

        raise CommitNotTrusted(verdict.refusal)
    try:
        desired = load_desired(
            snapshot,
            ManifestLoader(
                reserved_ports=reserved_ports(args), allowed_host_paths=allowed_host_paths(args)
            ),
        )
    except ManifestInvalid as error:
        hint = separate_trees_hint(snapshot, args.path, (d.path for d in error.diagnostics))
        if hint is not None:
            error.detail = (*error.detail, hint)
        raise
    return resolved_secrets(args, desired)


def make_plan(args: argparse.Namespace) -> Plan:
    """Desired state from the source, live state from the runtimes and store, then the
    plan: the field diff, and the next pass exactly as the reconciler would decide it."""
    desired = desired_of(args)
    state = state_dir(args)
    store = open_store(args, readonly=True)
    try:
        applied = applied_nodes(store)
        if desired.nodes:
            targets = node_targets(desired.nodes.values(), choose_default_driver(args.runtime))
        else:
            # The implicit node as the daemon registered it (its driver); not the Nodes
            # that have left Git, which the pass drains like the daemon's does (below).
            gone = {node.name for node in applied}
            targets = [t for t in registered_targets(store, args.runtime) if t.name not in gone]
            targets = targets or node_targets((), choose_default_driver(args.runtime))
            hint = driver_mismatch(desired, args.runtime, targets[0].driver)
            if hint is not None:
                sys.stderr.write(f"warning: {hint}\n")
        targets += leaving_targets(applied, targets)
        if store is not None:
            made = pool_targets(store.list_node_pools())
            known = {t.name for t in targets}
            targets += [t for t in made if t.name not in known]
        runtimes = open_runtimes(targets, state, secrets_dir=secrets_dir_of(args))
        live = observe(targets, runtimes, cluster_identity(store, state, create=False), store)
    finally:
        if store is not None:
            store.close()
    # Readiness as the daemon would see it: one probe of each running replica.
    live = assess_readiness(live, runtimes)
    # Secret values this plan could not digest are taken as unchanged (docs/plan-in-ci.md).
    desired = with_applied_digests(
        desired,
        {name: s.applied.canonical for name, s in live.services.items() if s.applied is not None},
    )
    # Requests vertical mode Auto applied are the autoscaler's, not drift from Git.
    desired = with_vertical(desired, live.autoscalers)
    now = time.time()
    decision = decide_pass(
        pass_input_of(
            desired,
            live,
            now,
            lost=lost_nodes(live, now, args.node_grace),
            unschedulable=frozenset(t.name for t in targets if t.unschedulable),
            runnable=frozenset(runtimes),
            scoring=args.scoring,
            ingress_image=_ingress_image(targets, state),
        )
    )
    plan = compute_plan(desired, live, scoring=args.scoring, decision=decision)
    lb_host = running_daemon(args).get("lbHost")
    plan = replace(
        plan,
        warnings=(
            *plan.warnings,
            *_foreign_ports(desired, state, lb_host if isinstance(lb_host, str) else None),
        ),
    )
    keep_until_exit(desired, live, decision, plan)
    return plan


def _ingress_image(targets: list[NodeTarget], state: Path) -> str | None:
    """The ingress image remote hosts must run, as the daemon names it (None: no such
    host). Naming it reads no file; nothing is built."""
    if not any(t.own_ingress for t in targets):
        return None
    from gitorch.runtime.ingress_image import ingress_image

    return ingress_image(state / "ingress").tag


def _foreign_ports(desired: DesiredState, state: Path, lb_host: str | None) -> list[str]:
    """Expose ports another process already listens on: the services would fail there.
    ``lb_host``: where the running daemon's load balancer listens (a port held on another
    address is free there); None (no daemon runs): any address counts."""
    wanted: dict[int, str] = {}
    for name, service in desired.services.items():
        if service.expose is not None:
            wanted[service.expose.port] = name
        blue = service.strategy.blue_green
        if blue is not None and blue.preview_port:
            wanted[blue.preview_port] = f"{name} (preview)"
    # This state's own daemon and data plane (the proxy outlives the daemon and is not its
    # child) serve these ports on purpose: only other programs are in the services' way.
    owners = own_data_plane(state)
    if (state / STATE_DB).exists():
        from gitorch.state import lock_holder

        holder = lock_holder(state)
        if holder is not None and holder.pid is not None:
            owners.append(holder.pid)
    found: list[str] = []
    for port, holders in sorted(port_holders(wanted, host=lb_host).items()):
        foreign = [
            h
            for h in holders
            if h.pid is None or not any(descends_from(h.pid, owner) for owner in owners)
        ]
        if foreign:
            found.append(
                f"port {port} of {wanted[port]} is held by "
                + ", ".join(h.describe() for h in foreign)
                + ": the service cannot be served there until it is freed"
            )
    return found


def run(args: argparse.Namespace) -> int:
    if args.server:
        return _run_on_server(args)
    one_shot_gc()
    plan = make_plan(args)
    if args.format == "json":
        binary = getattr(sys.stdout, "buffer", None)
        if binary is not None:
            sys.stdout.flush()
            write_pieces(binary, render_json_pieces(plan))
        else:  # a text-only stream (a test's capture)
            sys.stdout.write(render_json(plan))
    elif args.format == "markdown":
        from gitorch.diff.render.markdown import render_markdown

        sys.stdout.write(render_markdown(plan))
    else:
        from gitorch.diff.render.text import DirectOutput, render_text

        # As gitorch's stdout console prints it, without making one (rich's imports are
        # ~30 ms) where its choice of escape codes is plain: a pipe, a file, a terminal.
        around = escape_codes_around(sys.stdout)
        render_text(plan, stdout() if around is None else DirectOutput(sys.stdout, around, stdout))
    return EXIT_CHANGES if plan.has_changes else EXIT_NO_CHANGES


def _run_on_server(args: argparse.Namespace) -> int:
    """``--server``: the daemon plans (``GET /api/v1/plan``) and renders the format asked
    for; its headers say whether the plan changes anything (the exit code)."""
    from urllib.parse import urlencode

    import orjson

    from gitorch.api.server import PLAN_CHANGES_HEADER
    from gitorch.commands.remote import ask

    given = [d for d in LOCAL_ONLY if getattr(args, d, None) != args.local_defaults.get(d)]
    if given:
        options = ", ".join("--" + dest.replace("_", "-") for dest in given)
        raise ConfigError(
            f"{options} cannot be used with --server: the daemon plans with its own "
            "repository, folder, secrets, signature policy and nodes (only --ref and "
            "--format are sent)"
        )
    query = {"format": args.format, **({"ref": args.ref} if args.ref else {})}
    body, headers = ask(
        args,
        f"/api/v1/plan?{urlencode(query)}",
        PLAN_TIMEOUT,
        accept="application/json" if args.format == "json" else "text/plain, text/markdown",
    )
    changes = headers.get(PLAN_CHANGES_HEADER)
    if changes not in ("true", "false"):
        raise GitorchError(
            f"the daemon at {args.server} did not say whether its plan changes anything "
            f"(no {PLAN_CHANGES_HEADER} header: a gitorch older than this command?)"
        )
    if args.format == "json":
        from gitorch.diff.render import json_bytes

        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise GitorchError(f"the daemon at {args.server} did not answer JSON") from exc
        text = json_bytes(document)  # as a local plan writes it
    else:
        text = body
    binary = getattr(sys.stdout, "buffer", None)
    if binary is not None:
        sys.stdout.flush()
        binary.write(text)
        binary.flush()
    else:  # a text-only stream (a test's capture)
        sys.stdout.write(text.decode("utf-8"))
    return EXIT_CHANGES if changes == "true" else EXIT_NO_CHANGES
