"""``gitorch history [SERVICE]``: every applied revision, newest first.

Reads the state store read-only (``--state``), or asks a running daemon (``--server``,
``GET /api/v1/history``). Both give the same list of ``RevisionRecord.to_json()``
documents, and the text table is rendered from that list, so the two paths cannot drift.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from rich.markup import escape
from rich.table import Table

from gitorch.commands.common import (
    ELSEWHERE,
    add_format_option,
    add_state_option,
    looked_in,
    print_json,
    require_state,
    short,
    state_location,
    stderr,
    stdout,
)
from gitorch.commands.remote import (
    add_token_option,
    client_tls,
    client_token,
    fetch_json,
    server_url,
)
from gitorch.errors import GitorchError
from gitorch.readmodel.history import read_local, volume_fate

#: Revisions shown when --limit is not given.
DEFAULT_LIMIT = 50

#: The API caps one page at this many revisions (gitorch.api.server.MAX_HISTORY_LIMIT).
SERVER_MAX_LIMIT = 1000

#: Changes named in the SUMMARY column before "(+N more)".
SUMMARY_CHANGES = 3

EXAMPLE = """example:
  gitorch history
  gitorch history web --limit 5
  gitorch history --format json
  gitorch history --server http://127.0.0.1:7420
  gitorch history --scaling --format json
"""

RESULT_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "rolled-back": "magenta",
    "in-progress": "cyan",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "history",
        help="every applied revision: commit, author, signer, time, result, trigger, summary",
        description="List the revisions gitorch applied, newest first: the commit, its author "
        "and signer, when it was committed and applied (UTC), the result, what triggered it "
        "(poll, local commit, webhook, API, CLI apply) and what changed; under them, the "
        "scaling decisions (the autoscaler's counts, vertical mode Auto, node pools' nodes "
        "made, drained and deleted, with why). Reads the state "
        "store without locking it (safe while a daemon runs). Exit 0; 1 when there is no "
        "state store where it looks.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("service", nargs="?", help="only revisions that touched this service")
    where = parser.add_mutually_exclusive_group()
    add_state_option(where, parser)  # a mutually exclusive group takes add_argument too
    where.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="ask a running daemon instead of reading --state (e.g. http://127.0.0.1:7420, "
        "or https://HOST:PORT with --ca-file)",
    )
    add_token_option(parser)
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N revisions (default {DEFAULT_LIMIT}; 0 = all)",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="only the scaling decisions (the autoscaler's counts, vertical mode Auto's "
        "requests, node pools' nodes; the text output lists them under the revisions)",
    )
    add_format_option(parser, "json")
    parser.set_defaults(run=run)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (all) or more")
    return value


# -- reading ---------------------------------------------------------------------------


def read_server(
    server: str,
    service: str | None,
    limit: int | None,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
    *,
    scaling: bool = False,
) -> list[dict[str, Any]]:
    """History from a running daemon's ``GET /api/v1/history`` (``token``: its API token;
    ``scaling``: its scaling decisions instead of its revisions)."""
    base = server_url(server)
    query: dict[str, str | int] = {"limit": min(limit or SERVER_MAX_LIMIT, SERVER_MAX_LIMIT)}
    if service:
        query["service"] = service
    if scaling:
        query["scaling"] = 1
    url = f"{base}/api/v1/history?{urlencode(query)}"
    data = fetch_json(url, server, token=token, context=context)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise GitorchError(f"the daemon at {server} answered something that is not a history")
    return data


# -- the command -----------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    limit = args.limit or None  # 0 = all
    if args.scaling:
        return _run_scaling(args, limit)
    if args.server:
        entries: list[dict[str, Any]] | None = read_server(
            args.server, args.service, limit, client_token(args), client_tls(args)
        )
    else:
        location = state_location(args)
        require_state(location)
        entries = read_local(location, args.service, limit)
    if args.format == "json":
        print_json(entries or [])
        return 0
    scaling = _scaling(args, limit)
    if not entries:
        where = looked_in(None if args.server else state_location(args), args.server)
        if not args.service:
            stdout().print(f"no revisions applied yet {escape(where)}")
        else:
            stdout().print(
                f"no revisions applied to service {escape(args.service)} {escape(where)}"
            )
        if scaling:
            render_scaling(scaling)
        else:
            stderr().print(f"hint: {escape(ELSEWHERE)}")
        return 0
    render(entries)
    if scaling:
        render_scaling(scaling)
    return 0


def _scaling(args: argparse.Namespace, limit: int | None) -> list[dict[str, Any]]:
    """The scaling decisions, from the daemon (``--server``) or the store."""
    if args.server:
        found = read_server(
            args.server, args.service, limit, client_token(args), client_tls(args), scaling=True
        )
        # A daemon older than `scaling=1` answers its revisions: they are no decisions.
        return [d for d in found if "kind" in d and "object" in d]
    return read_local(state_location(args), args.service, limit, scaling=True) or []


def _run_scaling(args: argparse.Namespace, limit: int | None) -> int:
    if not args.server:
        require_state(state_location(args))
    decisions = _scaling(args, limit)
    if args.format == "json":
        print_json(decisions)
        return 0
    if not decisions:
        where = looked_in(None if args.server else state_location(args), args.server)
        stdout().print(f"no scaling decisions yet {escape(where)}")
        return 0
    render_scaling(decisions)
    return 0


def render_scaling(decisions: Sequence[Mapping[str, Any]]) -> None:
    """The scaling decisions, newest first: when, what, which decision, and why."""
    table = Table(box=None, pad_edge=False, title="scaling decisions", title_justify="left")
    for column in ("AT", "OBJECT", "DECISION", "WHAT"):
        table.add_column(column, no_wrap=column != "WHAT")
    for entry in decisions:
        table.add_row(
            utc_minutes(entry.get("at"), seconds=True),
            escape(str(entry.get("object") or "-")),
            escape(str(entry.get("kind") or "")),
            escape(str(entry.get("message") or "")),
        )
    stdout().print()
    stdout().print(table)


def render(entries: Sequence[Mapping[str, Any]]) -> None:
    """The rich table, newest first (the order the list already has)."""
    table = Table(box=None, pad_edge=False)
    columns = ("REVISION", "AUTHOR", "SIGNER", "COMMITTED", "APPLIED", "RESULT", "TRIGGER")
    for column in (*columns, "SUMMARY"):
        table.add_column(column, no_wrap=column in ("REVISION", "COMMITTED", "APPLIED", "RESULT"))
    for entry in entries:
        result = str(entry.get("result", ""))
        table.add_row(
            short(entry.get("revision")),
            escape(str(entry.get("author") or "-")),
            escape(str(entry.get("signer") or "-")),
            utc_minutes(entry.get("committedAt")),
            utc_minutes(entry.get("appliedAt")),
            f"[{RESULT_STYLE.get(result, 'white')}]{escape(result)}[/]",
            escape(str(entry.get("trigger") or "-")),
            escape(summarize(entry)),
        )
    stdout().print(table)


def utc_minutes(stamp: object, *, seconds: bool = False) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM`` UTC (``:SS`` too with ``seconds``; as
    given when it cannot be parsed)."""
    if not isinstance(stamp, str) or not stamp:
        return "-"
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def summarize(entry: Mapping[str, Any]) -> str:
    """One line: what changed (``update web, create Volume/data``), then why it failed."""
    changes = [c for c in entry.get("changes") or [] if isinstance(c, dict)]
    if changes:
        named = [_change_text(c) for c in changes[:SUMMARY_CHANGES]]
        text = ", ".join(named)
        if len(changes) > SUMMARY_CHANGES:
            text += f" (+{len(changes) - SUMMARY_CHANGES} more)"
    elif entry.get("services"):
        text = "services: " + ", ".join(sorted(entry["services"]))
    else:
        text = "no changes"
    reason = entry.get("reason")
    if reason and entry.get("result") in ("refused", "invalid") and not changes:
        return str(reason)  # nothing of it was read: "no changes" would mislead
    if reason and entry.get("trigger") == "recovered":
        return str(reason)  # what converged (its changes are the failed entry's, below it)
    if reason and entry.get("result") != "succeeded":
        # The bookkeeping names each service in its reason ("api: progress deadline
        # exceeded"); after "update api" alone that name is said twice.
        prefix = f"{changes[0].get('name')}: " if len(changes) == 1 else None
        if prefix is not None and str(reason).startswith(prefix):
            reason = str(reason)[len(prefix) :]
        text = f"{text}: {reason}"
    return text


def _change_text(change: Mapping[str, Any]) -> str:
    kind = change.get("kind", "Service")
    name = change.get("name", "?")
    target = name if kind == "Service" else f"{kind}/{name}"
    text = f"{change.get('action', 'change')} {target}"
    fate = volume_fate(change)
    if fate is not None:
        text += f" ({fate})"
    return text
