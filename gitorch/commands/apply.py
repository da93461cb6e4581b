"""``gitorch apply``: one reconcile to convergence. Exit 0 converged, 1 failed."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.live import Live
from rich.markup import escape
from rich.table import Table

from gitorch.apply.bookkeeping import Bookkeeper
from gitorch.apply.reconciler import CommitMeta, PassResult, Reconciler
from gitorch.apply.session import Session, SessionOptions, commit_meta, verified_commit
from gitorch.commands.cluster import add_runtime_option
from gitorch.commands.common import (
    add_host_path_option,
    add_secret_options,
    add_source_options,
    add_state_option,
    add_verify_options,
    allowed_host_paths,
    duration,
    positive_duration,
    short,
    state_dir,
    state_location,
    stderr,
    stdout,
    verified_snapshot,
)
from gitorch.decide.backoff import DEFAULT_CRASH_LOOP
from gitorch.decide.driver_hint import driver_mismatch
from gitorch.decide.guard import mass_prune
from gitorch.decide.nodepools import pools_that_fit, starting_replicas
from gitorch.errors import ConfigError
from gitorch.live import observe
from gitorch.live.inventory import local_node_name
from gitorch.manifests.loader import ManifestLoader, load_desired
from gitorch.manifests.model import DesiredState
from gitorch.process_limits import raise_open_files_limit
from gitorch.scheduler import LEAST_ALLOCATED, MOST_ALLOCATED
from gitorch.sources.verify import CommitNotTrusted
from gitorch.state.errors import NotLeader

EXAMPLE = """example:
  gitorch apply --path examples/repo --runtime process
  gitorch apply --ref main --expect-plan 3f2a9c0b1d4e
"""


def add_session_options(parser: argparse.ArgumentParser, lb_workers: str = "0") -> None:
    """Options shared by apply and daemon: where traffic is served, secrets, placement.

    ``lb_workers``: the default of ``--lb-workers``. The daemon serves traffic for good and
    takes ``auto``; a one-shot apply serves it only until it returns, where starting
    worker processes would cost more than they give."""
    add_state_option(parser)
    add_runtime_option(parser)
    add_host_path_option(parser, reads_daemon=False)
    parser.add_argument(
        "--lb-host",
        default="127.0.0.1",
        help="address the built-in load balancer listens on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--advertise-host",
        default=None,
        help="host replicas use to reach other services (<NAME>_SERVICE_HOST); "
        "default: the --lb-host, or 127.0.0.1 when it listens on all addresses",
    )
    add_secret_options(parser)
    parser.add_argument(
        "--data-plane",
        choices=("builtin", "haproxy"),
        default="builtin",
        help="who serves service endpoints: the built-in load balancer (default) or HAProxy",
    )
    parser.add_argument(
        "--lb-workers",
        type=_workers,
        default=lb_workers,
        metavar="N|auto",
        help="processes the built-in load balancer proxies on, each sharing every port "
        "(SO_REUSEPORT): the daemon's `gitorch proxy` workers (at least 1), or, for apply "
        "without a running proxy, 0: on a thread of this process; auto: one per CPU core, "
        f"at most 4 (0 on one core); default {lb_workers}",
    )
    parser.add_argument(
        "--ingress-workers",
        default="auto",
        metavar="N|auto",
        type=_ingress_workers,
        help="proxy worker processes of each remote host's ingress (auto: one per core "
        "of the host, at most 4; default auto)",
    )
    parser.add_argument(
        "--node-grace",
        type=duration,
        default=30.0,
        metavar="DURATION",
        help="how long a node may stay silent before its replicas are replaced elsewhere "
        "(30s, 1m, 500ms, 1m30s or seconds; default 30s)",
    )
    parser.add_argument(
        "--scoring",
        choices=(LEAST_ALLOCATED, MOST_ALLOCATED),
        default=LEAST_ALLOCATED,
        help="placement scoring: spread load (default) or bin-pack",
    )


def session_options(args: argparse.Namespace) -> SessionOptions:
    location = state_location(args)
    return SessionOptions(
        state_dir=state_dir(args),
        state=location if location.etcd is not None else None,
        # apply leads for as long as it runs, under a name of its own
        name=getattr(args, "name", None) or f"apply-{local_node_name()}-{os.getpid()}",
        lease_ttl=getattr(args, "lease_ttl", 5.0),
        runtime=args.runtime,
        lb_host=args.lb_host,
        advertise_host=args.advertise_host,
        secrets_dir=args.secrets_dir,
        age_key=args.age_key,
        scoring=args.scoring,
        node_grace=args.node_grace,
        data_plane=args.data_plane,
        lb_workers=args.lb_workers,
        allowed_host_paths=tuple(Path(p) for p in allowed_host_paths(args)),
        ingress_workers=args.ingress_workers,
    )


def _ingress_workers(text: str) -> str:
    if text == "auto" or (text.isdigit() and 1 <= int(text) <= 64):
        return text
    raise argparse.ArgumentTypeError(f"expected 1..64 or 'auto', not {text!r}")


def _workers(text: str) -> int:
    if text == "auto":
        cores = os.cpu_count() or 1
        return 0 if cores < 2 else min(cores, 4)
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', not {text!r}") from None
    if not 0 <= count <= 64:
        raise argparse.ArgumentTypeError(f"expected 0..64 or 'auto', not {count}")
    return count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="one reconcile: apply the plan and wait until it has converged or failed",
        description="Apply the desired state at --ref: roll every changed service out with its "
        "strategy (in dependsOn order), prune services removed from Git, and wait until "
        "everything has converged or a rollout failed (rolled back when autoRollback). "
        "Exit 0 converged, 1 failed. Service endpoints (expose) are served by the built-in load "
        "balancer while gitorch runs; run `gitorch daemon` to keep them up.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_options(parser)
    add_verify_options(parser)
    add_session_options(parser)
    parser.add_argument(
        "--expect-plan",
        type=plan_digest,
        metavar="DIGEST",
        help="refuse to act unless the plan's digest starts with DIGEST (from `gitorch plan`: "
        "the digest or its first 12 or more hex digits)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_duration,
        default=900.0,
        metavar="DURATION",
        help="give up (exit 1) after this long (30s, 1m, 500ms, 1m30s or seconds; default 15m)",
    )
    add_mass_prune_option(parser)
    parser.set_defaults(run=run)


def plan_digest(text: str) -> str:
    """``--expect-plan``: a plan digest or a prefix of it of at least 12 hex digits. Checked
    before anything is read, so a mistyped or cut digest is not reported as a changed plan."""
    digest = text.strip().lower()
    if not 12 <= len(digest) <= 64 or any(c not in "0123456789abcdef" for c in digest):
        raise argparse.ArgumentTypeError(
            f"a plan digest is 12 to 64 hex digits (`gitorch plan` prints it), not {text!r}"
        )
    return digest


def add_mass_prune_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-mass-prune``: shared by apply and daemon."""
    parser.add_argument(
        "--allow-mass-prune",
        action="store_true",
        help="apply a revision that removes every service, or more than half of them "
        "(refused by default: such a commit is usually a mistake, and pruned replicas "
        "cannot be brought back by a revert)",
    )


def _table(result: PassResult) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("SERVICE", "PHASE", "READY", "UPDATED", "STEP"):
        table.add_column(column)
    for svc in result.services:
        colour = {"Healthy": "green", "RolledBack": "magenta", "Degraded": "red"}.get(
            svc.phase, "cyan"
        )
        table.add_row(
            escape(svc.name),
            f"[{colour}]{svc.phase}[/]",
            f"{svc.ready}/{svc.desired}",
            str(svc.updated),
            escape(svc.message),
        )
    return table


def run(args: argparse.Namespace) -> int:
    if args.worktree:
        raise ConfigError(
            "apply applies commits, not uncommitted files: commit first (plan --worktree previews them)"
        )
    # Everything gitorch writes from here on (state, logs, caches) is private; replicas
    # get the usual umask back (runtime/process.py).
    os.umask(0o077)
    raise_open_files_limit()  # a pidfd per replica it starts, its balancer's connections
    snapshot, verdict = verified_snapshot(args)
    commit = verified_commit(
        replace(commit_meta(snapshot.revision, snapshot.commit), trigger="cli apply"), verdict
    )
    if verdict is not None and not verdict.trusted:
        with Session(session_options(args)) as session:
            Bookkeeper(session.store, DEFAULT_CRASH_LOOP).record_refused(
                snapshot.revision, commit, verdict.refusal, data=verdict.to_json()
            )
        raise CommitNotTrusted(verdict.refusal)
    desired = load_desired(snapshot, ManifestLoader(allowed_host_paths=allowed_host_paths(args)))
    with Session(session_options(args)) as session:
        hint = driver_mismatch(desired, args.runtime, session.default_driver)
        if hint is not None:
            stderr().print(f"[yellow]warning:[/] {escape(hint)}")
        if not session.leading:
            assert session.leadership is not None
            view = session.leadership.view()
            raise NotLeader(
                f"apply refused: {view.leader or 'another process'} reconciles "
                f"{session.store.describe()} ({view.message})",
                detail=("ask the leading daemon (gitorch status --server URL), or stop it",),
                leader=view.leader,
            )
        desired = session.secrets.resolve(desired)
        if not args.allow_mass_prune:
            applied = [a.name for a in session.store.list_applied() if a.kind == "Service"]
            why = mass_prune(applied, desired.services)
            if why is not None:
                reconciler = session.reconciler_for(desired)
                reconciler.books.record_refused(desired.revision, commit, why)
                raise ConfigError(f"revision {short(desired.revision)} refused: {why}")
        reconciler = session.reconciler_for(desired)
        pools = _PoolNotes(session, reconciler, desired)
        result = _converge(
            reconciler, desired, commit, args.timeout, args.expect_plan, first=pools.note
        )
        waiting = pools.waiting(result) if not result.converged else {}
        exposed = [s for s in desired.services.values() if s.expose is not None]
    for error in result.errors:
        stderr().print(f"[yellow]warning:[/] {escape(error)}")
    if result.converged and not result.failed:
        stdout().print(f"[green]✓[/] converged to {short(desired.revision)}")
        if exposed:
            stderr().print(
                "note: endpoints ("
                + ", ".join(f"{s.name} :{s.expose.port}" for s in exposed if s.expose)
                + ") are served while gitorch runs; `gitorch daemon` keeps them up"
            )
        return 0
    if result.failed:
        stderr().print(
            f"[red]✗[/] {short(desired.revision)} failed; see `gitorch status` and `gitorch history`"
        )
    else:
        stderr().print(f"[red]✗[/] not converged after {args.timeout:g}s")
        for replica, pool in sorted(waiting.items()):
            stderr().print(
                f"  {escape(replica)} waits for a node of NodePool {escape(pool)}, which "
                "`gitorch apply` does not make: run `gitorch daemon`"
            )
    return 1


class _PoolNotes:
    """What apply says about replicas only a NodePool's node would take: node pools act
    in the daemon alone (it alone watches how long replicas wait, and drains and deletes
    the nodes later); a one-shot apply makes no node it could never remove."""

    def __init__(self, session: Session, reconciler: Reconciler, desired: DesiredState) -> None:
        self.session, self.reconciler, self.desired = session, reconciler, desired

    def waiting(self, result: PassResult) -> dict[str, str]:
        """Replica -> the pool whose node would take it, of those ``result`` left waiting."""
        decision = result.decision
        if decision is None or not decision.unplaced or not self.desired.node_pools:
            return {}
        live = observe(
            self.reconciler.targets, self.reconciler.runtimes, self.session.cluster,
            self.session.store,
        )  # fmt: skip
        return pools_that_fit(
            self.desired, live, decision.unplaced, starting_replicas(self.desired, decision)
        )

    def note(self, result: PassResult) -> None:
        """Said after the first pass, so no one waits for the timeout to learn it."""
        for replica, pool in sorted(self.waiting(result).items()):
            stderr().print(
                f"note: {escape(replica)} fits no node; a node of NodePool {escape(pool)} "
                "would take it, but node pools make nodes in `gitorch daemon` only: "
                "`gitorch apply` makes none, and waits"
            )


def _converge(
    reconciler: Reconciler,
    desired: DesiredState,
    commit: CommitMeta,
    timeout: float,
    expect_plan: str | None = None,
    first: Callable[[PassResult], None] | None = None,
) -> PassResult:
    """Passes until converged (or failed for good, or ``timeout``). The first pass checks
    ``expect_plan`` against its own decision, so what runs is what was reviewed; ``first``
    is told what it did."""
    deadline = time.monotonic() + timeout
    interactive = sys.stdout.isatty()
    result = reconciler.reconcile(desired, commit, expect_plan=expect_plan)
    _print_actions(result)
    if first is not None:
        first(result)
    last_lines: dict[str, str] = {}
    failed_seen = False
    with (
        Live(_table(result), console=stdout(), transient=False, auto_refresh=False)
        if interactive
        else _NoLive() as live
    ):
        while True:
            if interactive:
                live.update(_table(result), refresh=True)
            else:
                for svc in result.services:
                    line = f"{svc.name}: {svc.phase} {svc.ready}/{svc.desired} ready, {svc.updated} updated - {svc.message}"
                    if last_lines.get(svc.name) != line:
                        stdout().print(escape(line))
                        last_lines[svc.name] = line
            if time.monotonic() > deadline:
                return result
            # A rollback is decided in one pass and carried out in the next ones (the
            # failed version's replicas are stopped then): a failed result is final only
            # once a later pass changed nothing, or apply would exit leaving them running.
            if result.converged and (not result.failed or (failed_seen and not result.actions)):
                return result
            failed_seen = result.converged and result.failed
            time.sleep(0.05 if result.actions else min(0.3, result.requeue_after))
            result = reconciler.reconcile(desired, commit)
            _print_actions(result)


def _print_actions(result: PassResult) -> None:
    """What the pass did, one line per replica action (as ``gitorch plan`` listed it)."""
    for action in result.executed:
        stderr().print(f"  {escape(action.verb)}: {escape(action.describe())}")


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *args: object, **kwargs: object) -> None:
        return None
