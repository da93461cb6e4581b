"""``gitorch logs SERVICE``: what a service's replicas wrote, live or after they died.

Reads the runtimes and the state directory directly, like ``gitorch status`` (no daemon,
no lock): live replicas' output from their runtime, ``--previous`` from what the drivers
kept of the last removed replicas of the service (``Runtime.retained_logs``: the end of
their output, how and when they ended). Program output is printed as written; gitorch
never prints a replica's environment.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.markup import escape

from gitorch.commands.cluster import ClusterView, add_runtime_option, open_view
from gitorch.commands.common import add_format_option, add_state_option, print_json, stderr
from gitorch.errors import ConfigError, GitorchError, RuntimeDriverError
from gitorch.live import observe
from gitorch.live.model import LiveReplica
from gitorch.manifests.quantities import format_duration
from gitorch.readmodel.logs import retained_json
from gitorch.runtime.base import RetainedLog

#: Lines per replica when --tail is not given (as ``kamal app logs``).
DEFAULT_TAIL = 100
#: --tail all: more lines than any log holds.
ALL_LINES = 10**9
#: How often --follow looks for replicas that started since.
DISCOVER_SECONDS = 2.0

EXAMPLE = """example:
  gitorch logs web
  gitorch logs web --replica web-2 --tail 20
  gitorch logs api --previous
  gitorch logs web --follow
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="a service's output: live replicas, or --previous: the last dead ones",
        description="Print what a service's replicas wrote (stdout and stderr). By default "
        "the last lines of every replica that exists now; with several replicas each line "
        "starts with the replica's name. --previous prints what is kept of the last removed "
        "replicas of the service (up to 5 per node, the last 64 KiB of each), newest first, "
        "each under a header saying how and when it ended. --follow keeps printing new "
        "lines, and those of replicas that start meanwhile, until Ctrl-C. Reads --state "
        "and the runtimes directly: no daemon is needed. Exit 0; 1 when there is nothing "
        "to show.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("service", help="the service whose replicas to show")
    parser.add_argument(
        "--replica",
        metavar="NAME",
        default=None,
        help="only this replica (its name as status shows it, e.g. web-2)",
    )
    parser.add_argument(
        "--previous",
        action="store_true",
        help="the output of the last removed (dead) replicas, newest first",
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new output until Ctrl-C"
    )
    parser.add_argument(
        "--tail",
        type=_tail,
        default=DEFAULT_TAIL,
        metavar="N",
        help=f"lines per replica, or 'all' (default: {DEFAULT_TAIL})",
    )
    add_state_option(parser)
    add_runtime_option(parser)
    add_format_option(parser, "json")
    parser.set_defaults(run=run)


def _tail(value: str) -> int:
    if value == "all":
        return ALL_LINES
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of lines or 'all', not {value!r}"
        ) from None
    if count < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return count


def run(args: argparse.Namespace) -> int:
    if args.follow and args.previous:
        raise ConfigError("--follow and --previous do not go together: dead replicas write no more")
    if args.follow and args.format == "json":
        raise ConfigError("--follow prints text only")
    view = open_view(args)
    try:
        if view.live.cluster == "" or view.state_dir is None:
            raise GitorchError(f"nothing has run from {view.state_dir} yet")
        if args.previous:
            return _previous(view, args)
        if args.follow:
            return _follow(view, args)
        return _live(view, args)
    except BrokenPipeError:
        # `gitorch logs web | head`: the reader has all it wanted. Python would complain
        # once more when it flushes stdout at exit, so stdout goes nowhere from here on.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        view.close()


# -- live ----------------------------------------------------------------------------


def _replicas(view: ClusterView, service: str, only: str | None) -> list[LiveReplica]:
    """The service's replicas that exist now (optionally one of them), by name."""
    found = view.live.services.get(service)
    replicas = list(found.replicas) if found is not None else []
    if only is not None:
        replicas = [r for r in replicas if only in (r.replica, r.name, r.id)]
    return sorted(replicas, key=lambda r: (r.replica, r.name))


def _nothing_live(view: ClusterView, args: argparse.Namespace) -> GitorchError:
    what = f"{args.replica} of {args.service}" if args.replica else f"of {args.service}"
    unknown = [n for n in view.live.nodes.values() if not n.ready]
    detail = tuple(f"node {n.name} did not answer: {n.message}" for n in unknown)
    if args.service not in view.live.services:
        known = ", ".join(sorted(view.live.services)) or "none"
        return GitorchError(f"no service {args.service} (services: {known})", detail=detail)
    return GitorchError(
        f"no replica {what} exists now (gitorch logs {args.service} --previous shows "
        "the last dead ones)",
        detail=detail,
    )


def _live(view: ClusterView, args: argparse.Namespace) -> int:
    replicas = _replicas(view, args.service, args.replica)
    if not replicas:
        raise _nothing_live(view, args)
    documents = []
    for replica in replicas:
        runtime = view.runtimes.get(replica.node)
        try:
            text = runtime.logs(replica.id, args.tail) if runtime is not None else ""
        except RuntimeDriverError as exc:
            stderr().print(f"[yellow]warning:[/] {escape(replica.replica)}: {escape(exc.message)}")
            continue
        documents.append((replica, text))
    if args.format == "json":
        print_json(
            [
                {
                    "replica": r.replica,
                    "name": r.name,
                    "node": r.node,
                    "state": r.state,
                    "output": text,
                }
                for r, text in documents
            ]
        )
        return 0
    prefixed = len(replicas) > 1
    for replica, text in documents:
        _write_lines(text.splitlines(), f"{replica.replica} | " if prefixed else "")
    return 0


def _write_lines(lines: Iterable[str], prefix: str = "") -> None:
    out = sys.stdout
    for line in lines:
        out.write(f"{prefix}{line}\n")
    out.flush()


# -- previous ------------------------------------------------------------------------


def _retained(view: ClusterView, service: str) -> list[RetainedLog]:
    """Every node's kept output of ``service``, newest removal first."""
    kept: list[RetainedLog] = []
    for runtime in view.runtimes.values():
        kept.extend(runtime.retained_logs(view.live.cluster, service))
    return sorted(kept, key=lambda k: k.removed_at, reverse=True)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "?"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def header(kept: RetainedLog) -> str:
    """One line per dead replica: which one, where, how and when it ended."""
    reason = kept.exit_reason or "exit status unknown"
    ended = kept.finished_at or kept.removed_at
    ran = ""
    if kept.started_at is not None and kept.finished_at is not None:
        ran = f", ran {format_duration(max(0, round(kept.finished_at - kept.started_at)))}"
    cut = " (output cut to its last 64 KiB)" if kept.truncated else ""
    return (
        f"--- {kept.replica} on {kept.node}: {reason}, ended {_when(ended)}{ran}"
        f" [{kept.name}, revision {(kept.revision or '?')[:12]}]{cut} ---"
    )


def _previous(view: ClusterView, args: argparse.Namespace) -> int:
    kept = [
        k
        for k in _retained(view, args.service)
        if args.replica is None or args.replica in (k.replica, k.name, k.instance_id)
    ]
    if not kept:
        what = f"replica {args.replica} of {args.service}" if args.replica else args.service
        raise GitorchError(f"no removed replica of {what} has left output here")
    if args.format == "json":
        print_json([retained_json(k, args.tail) for k in kept])
        return 0
    for index, entry in enumerate(kept):
        if index:
            sys.stdout.write("\n")
        _write_lines([header(entry), *_last(entry.output, args.tail)])
    return 0


def _last(output: str, count: int) -> list[str]:
    lines = output.splitlines()
    return lines[-count:] if count > 0 else []


# -- follow --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    replica: str
    text: str


def _follow(view: ClusterView, args: argparse.Namespace) -> int:
    """Stream every replica's new lines; pick up replicas that start meanwhile."""
    lines: queue.Queue[_Line] = queue.Queue(maxsize=10_000)
    followed: set[str] = set()
    next_look = 0.0
    try:
        while True:
            now = time.monotonic()
            if now >= next_look:
                if followed:
                    view.live = observe(view.targets, view.runtimes, view.live.cluster, view.store)
                fresh = _replicas(view, args.service, args.replica)
                if not fresh and not followed:
                    raise _nothing_live(view, args)
                # The first replicas show their last lines; later ones all they wrote.
                tail = ALL_LINES if followed else args.tail
                for replica in fresh:
                    if replica.id not in followed and replica.state == "running":
                        followed.add(replica.id)
                        _start_follower(view, replica, tail, lines)
                next_look = now + DISCOVER_SECONDS
            try:
                line = lines.get(timeout=max(0.05, next_look - time.monotonic()))
            except queue.Empty:
                continue
            _write_lines([line.text], f"{line.replica} | " if len(followed) > 1 else "")
    except KeyboardInterrupt:
        return 0


def _start_follower(
    view: ClusterView, replica: LiveReplica, tail: int, lines: queue.Queue[_Line]
) -> None:
    runtime = view.runtimes[replica.node]

    def pump() -> None:
        stream: Iterator[str] | None = None
        try:
            stream = runtime.follow_logs(replica.id, tail)
            for text in stream:
                lines.put(_Line(replica.replica, text))
        except RuntimeDriverError as exc:
            lines.put(_Line(replica.replica, f"(gitorch: {exc.message})"))

    threading.Thread(target=pump, name=f"logs-{replica.replica}", daemon=True).start()
