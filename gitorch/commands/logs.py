"""``gitorch logs SERVICE``: what a service's replicas wrote, live or after they died.

Reads the runtimes and the state directory directly, like ``gitorch status`` (no daemon,
no lock): live replicas' output from their runtime, ``--previous`` from what the drivers
kept of the last removed replicas of the service (``Runtime.retained_logs``: the end of
their output, how and when they ended). With ``--server`` it asks a daemon instead
(``GET /api/v1/services/NAME/logs``; ``--follow`` reads its ``?follow=1`` stream).
Program output is printed as written; gitorch never prints a replica's environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from rich.markup import escape

from gitorch.commands.cluster import ClusterView, add_runtime_option, open_view
from gitorch.commands.common import add_format_option, add_state_option, print_json, stderr
from gitorch.commands.remote import add_token_option, ask_json, ask_lines
from gitorch.errors import ConfigError, GitorchError
from gitorch.live import observe
from gitorch.live.model import LiveState
from gitorch.manifests.quantities import format_duration
from gitorch.readmodel.logs import ALL_LINES, LogFollower, live_logs, previous_logs
from gitorch.runtime.base import Runtime

#: Lines per replica when --tail is not given (as ``kamal app logs``).
DEFAULT_TAIL = 100
#: Seconds ``--follow --server`` waits for a word from the daemon (which sends an empty
#: line every ``LOG_KEEPALIVE_SECONDS``, 10) before it says the daemon is gone.
FOLLOW_QUIET_SECONDS = 30.0

EXAMPLE = """example:
  gitorch logs web
  gitorch logs web --replica web-2 --tail 20
  gitorch logs api --previous
  gitorch logs web --follow
  gitorch logs web --follow --format json
  gitorch logs web --server https://deploy.example:7420 --tail 20
  gitorch logs web --server https://deploy.example:7420 --follow
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
        "lines, and those of replicas that start meanwhile, until Ctrl-C (with --format "
        'json: one JSON object per line, {"follow": REPLICA} when a replica starts to be '
        'followed and {"replica": REPLICA, "line": TEXT} for each line). Reads --state '
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
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="ask a running daemon (its HTTP API) instead of reading --state and the "
        "runtimes (with --follow, it streams the lines)",
    )
    add_token_option(parser)
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
    try:
        if args.server:
            return _from_server(args)
        view = open_view(args)
        try:
            if view.live.cluster == "" or view.state_dir is None:
                raise GitorchError(f"nothing has run from {view.state_dir} yet")
            if args.previous:
                documents = previous_logs(
                    view.runtimes.values(), view.live.cluster, args.service, args.replica, args.tail
                )
                return _show_previous(documents, args)
            if args.follow:
                return _follow(view, args)
            documents, warnings = live_logs(
                view.live, view.runtimes, args.service, args.replica, args.tail
            )
            return _show_live(documents, warnings, args)
        finally:
            view.close()
    except BrokenPipeError:
        # `gitorch logs web | head`: the reader has all it wanted. Python would complain
        # once more when it flushes stdout at exit, so stdout goes nowhere from here on.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _from_server(args: argparse.Namespace) -> int:
    """The daemon's ``GET /api/v1/services/NAME/logs``, shown as the local command shows
    what it reads itself."""
    query: dict[str, str | int] = {"tail": min(args.tail, ALL_LINES)}
    if args.replica:
        query["replica"] = args.replica
    if args.previous:
        query["previous"] = 1
    if args.follow:
        query["follow"] = 1
    path = f"/api/v1/services/{quote(args.service, safe='')}/logs?{urlencode(query)}"
    if args.follow:
        with suppress(KeyboardInterrupt):  # Ctrl-C: the usual end of --follow
            print_events(ask_lines(args, path, FOLLOW_QUIET_SECONDS), args.format == "json")
        return 0
    data = ask_json(args, path)
    key = "previous" if args.previous else "replicas"
    documents = data.get(key) if isinstance(data, dict) else None
    warnings = data.get("warnings", []) if isinstance(data, dict) else None
    if (
        not isinstance(documents, list)
        or not all(isinstance(d, dict) and "output" in d for d in documents)
        or not isinstance(warnings, list)
    ):
        raise GitorchError(f"the daemon at {args.server} answered something that is not logs")
    if args.previous:
        return _show_previous(documents, args)
    return _show_live(documents, [str(w) for w in warnings], args)


def _show_live(
    documents: list[dict[str, Any]], warnings: list[str], args: argparse.Namespace
) -> int:
    for warning in warnings:
        stderr().print(f"[yellow]warning:[/] {escape(warning)}")
    if args.format == "json":
        print_json(documents)
        return 0
    prefixed = len(documents) + len(warnings) > 1
    for document in documents:
        _write_lines(
            str(document["output"]).splitlines(), f"{document['replica']} | " if prefixed else ""
        )
    return 0


def _write_lines(lines: Iterable[str], prefix: str = "") -> None:
    out = sys.stdout
    for line in lines:
        out.write(f"{prefix}{line}\n")
    out.flush()


# -- previous ------------------------------------------------------------------------


def _when(stamp: str | None) -> str:
    if stamp is None:
        return "?"
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def header(kept: Mapping[str, Any]) -> str:
    """One line per dead replica (a :func:`retained_json` document): which one, where,
    how and when it ended."""
    reason = kept.get("exitReason") or "exit status unknown"
    ended = kept.get("finishedAt") or kept.get("removedAt")
    ran = ""
    started, finished = kept.get("startedAt"), kept.get("finishedAt")
    if started is not None and finished is not None:
        seconds = (
            datetime.fromisoformat(finished) - datetime.fromisoformat(started)
        ).total_seconds()
        ran = f", ran {format_duration(max(0, round(seconds)))}"
    cut = " (output cut to its last 64 KiB)" if kept.get("truncated") else ""
    return (
        f"--- {kept['replica']} on {kept['node']}: {reason}, ended {_when(ended)}{ran}"
        f" [{kept['name']}, revision {(kept.get('revision') or '?')[:12]}]{cut} ---"
    )


def _show_previous(documents: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """Dead replicas' kept output (:func:`retained_json` documents, ``tail`` lines each),
    newest first."""
    if args.format == "json":
        print_json(documents)
        return 0
    for index, document in enumerate(documents):
        if index:
            sys.stdout.write("\n")
        _write_lines([header(document), *str(document["output"]).splitlines()])
    return 0


# -- follow --------------------------------------------------------------------------


def _follow(view: ClusterView, args: argparse.Namespace) -> int:
    """Stream every replica's new lines; pick up replicas that start meanwhile."""
    looked = False

    def look() -> tuple[LiveState, Mapping[str, Runtime]]:
        nonlocal looked
        if looked:  # the first look is the view's own observation
            view.live = observe(view.targets, view.runtimes, view.live.cluster, view.store)
        looked = True
        return view.live, view.runtimes

    follower = LogFollower(look, args.service, args.replica, args.tail)
    try:
        with suppress(KeyboardInterrupt):  # Ctrl-C: the usual end of --follow
            print_events(follower.events(), args.format == "json")
    finally:
        follower.close()
    return 0


def print_events(events: Iterable[Any], as_json: bool = False) -> None:
    """Print followed lines (``LogFollower`` events, local or from the API's stream),
    each prefixed with its replica once more than one is followed, and with its commit
    where one replica name runs two (a canary slot's stable and new replica);
    ``as_json``: every event as one line of JSON (JSON Lines, as the API's stream sends
    them), flushed at once so a reader of a pipe sees each as it comes."""
    followed: dict[str, set[str]] = {}  # replica name -> the commits followed under it
    for event in events:
        if not isinstance(event, dict):
            continue  # a keep-alive
        if as_json:
            sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        elif "follow" in event:
            followed.setdefault(str(event["follow"]), set()).add(str(event.get("revision")))
        elif "line" in event:
            replica = str(event.get("replica"))
            if len(followed.get(replica, ())) > 1:  # a canary slot's stable and new replica
                prefix = f"{replica} ({str(event.get('revision') or '?')[:8]}) | "
            else:
                prefix = f"{replica} | " if len(followed) > 1 else ""
            _write_lines([str(event["line"])], prefix)
