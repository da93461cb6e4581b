"""``gitorch audit``: who did what, and when; ``--verify`` proves the log was not edited.

Reads the state store's audit log read-only (safe while a daemon runs). Every entry names
its actor: ``signer:NAME <EMAIL>`` (a commit with a verified signature), ``author:NAME
<EMAIL>`` (what an unsigned commit claims), ``token:NAME`` (the daemon's API),
``user:USER@HOST`` (the CLI: promote, abort, drain), ``gitorch`` (the daemon on its own: a
restart, drift, a failure). Entries are chained by hash (gitorch/state/audit_chain.py);
``--verify`` checks every link and names the entry that was edited, removed or moved.
``--head`` prints the newest link (``ID:HASH``) to keep somewhere else; ``--verify
--expect ID:HASH`` later proves the log still holds it unchanged, which catches even a
rewrite of the whole chain.
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from rich.markup import escape
from rich.table import Table

from gitorch.commands.common import (
    add_format_option,
    add_state_option,
    print_json,
    require_state,
    state_location,
    stderr,
    stdout,
)
from gitorch.commands.remote import add_token_option, ask_json
from gitorch.errors import ConfigError, GitorchError
from gitorch.state import StateStore
from gitorch.state.audit_chain import ChainEntry, Verdict, chain_entry_of, verify

EXAMPLE = """example:
  gitorch audit --since 1h
  gitorch audit --service web --format json
  gitorch audit --verify
  gitorch audit --head                       # record ID:HASH somewhere else
  gitorch audit --verify --expect 812:9f86d081884c...
  gitorch audit --server https://deploy.example:7420 --verify
"""

#: Entries shown when --limit is not given (the newest; shown oldest first).
DEFAULT_LIMIT = 100

#: Seconds to wait for a daemon's whole chain (a long log is megabytes).
CHAIN_TIMEOUT = 60.0

_EXPECT = re.compile(r"^(\d+):([0-9a-f]{64})$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="the audit log: who did what, when; --verify proves it was not edited",
        description=__doc__,
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_state_option(parser)
    parser.add_argument(
        "--since",
        type=since_time,
        default=None,
        metavar="WHEN",
        help="entries from then on: a duration ago (30m, 2h, 1d) or a time "
        "(2024-05-01, 2024-05-01T12:00:00Z)",
    )
    parser.add_argument("--service", default=None, help="only entries about this service")
    parser.add_argument("--kind", default=None, help="only entries of this kind (rollout.abort)")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"the newest N entries, shown oldest first (default {DEFAULT_LIMIT}; 0 = all)",
    )
    check = parser.add_mutually_exclusive_group()
    check.add_argument(
        "--verify",
        action="store_true",
        help="check the hash chain of the whole log: exit 0 intact, 1 with the entries "
        "that were edited, removed or reordered",
    )
    check.add_argument(
        "--head",
        action="store_true",
        help="print the newest entry's ID:HASH, to keep off this host for --expect",
    )
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="ID:HASH",
        help="with --verify: an entry recorded earlier by --head that must still be there, "
        "unchanged (repeatable)",
    )
    parser.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="ask a running daemon (its HTTP API) instead of reading --state; --verify "
        "checks the chain it sends here, on this side",
    )
    add_token_option(parser)
    add_format_option(parser, "json")
    parser.set_defaults(run=run)


def since_time(text: str) -> float:
    """argparse type of ``--since``: a duration ago, or an ISO 8601 date or time (UTC
    unless it says otherwise)."""
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        stamp = None
    if stamp is not None:
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
    days = re.fullmatch(r"(\d+)d", text)
    if days:
        return time.time() - int(days.group(1)) * 86400
    from gitorch.commands.common import duration

    try:
        return time.time() - duration(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a duration ago (30m, 2h, 1d) or a time (2024-05-01T12:00:00Z), not {text!r}"
        ) from None


def run(args: argparse.Namespace) -> int:
    if args.expect and not args.verify:
        raise ConfigError("--expect goes with --verify")
    expected = _expected(args.expect)
    if args.verify or args.head:
        entries, highest = _chain_from_server(args) if args.server else _chain_here(args)
        verdict = verify(entries, highest_id=highest, expected=expected)
        return _head(verdict, args.format) if args.head else _verdict(verdict, args.format)
    # Newest first, as both sources give them; shown oldest first.
    events = _events_from_server(args) if args.server else _events_here(args)
    events.reverse()
    if args.format == "json":
        print_json(events)
        return 0
    if not events:
        stdout().print("no audit entries" + (" match" if _filtered(args) else " yet"))
        return 0
    table = Table(box=None, pad_edge=False)
    for column in ("#", "AT (UTC)", "ACTOR", "KIND", "SERVICE", "MESSAGE"):
        table.add_column(column, no_wrap=column != "MESSAGE")
    for event in events:
        at = datetime.fromisoformat(str(event["at"])).astimezone(UTC)
        table.add_row(
            str(event["id"]),
            at.strftime("%Y-%m-%d %H:%M:%S"),
            escape(str(event.get("actor") or "-")),
            escape(str(event["kind"])),
            escape(str(event.get("service") or "-")),
            escape(str(event["message"])),
        )
    stdout().print(table)
    return 0


def _events_here(args: argparse.Namespace) -> list[dict[str, Any]]:
    location = state_location(args)
    require_state(location)
    with StateStore(location, readonly=True) as store:
        events = store.list_events(
            service=args.service,
            kind=args.kind,
            since=args.since,
            limit=args.limit if args.limit > 0 else None,
            newest_first=True,
        )
    return [event.to_json() for event in events]


def _chain_here(args: argparse.Namespace) -> tuple[list[ChainEntry], int | None]:
    location = state_location(args)
    require_state(location)
    with StateStore(location, readonly=True) as store:
        return store.audit_chain()


def _events_from_server(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``GET /api/v1/audit`` with the filters, newest first."""
    query: dict[str, str | int] = {"limit": max(args.limit, 0)}
    for name in ("service", "kind"):
        if getattr(args, name):
            query[name] = getattr(args, name)
    if args.since is not None:
        query["since"] = repr(args.since)
    data = ask_json(args, f"/api/v1/audit?{urlencode(query)}")
    if not isinstance(data, list) or not all(isinstance(e, dict) and "at" in e for e in data):
        raise GitorchError(
            f"the daemon at {args.server} answered something that is not an audit log"
        )
    return data


def _chain_from_server(args: argparse.Namespace) -> tuple[list[ChainEntry], int | None]:
    """The daemon's whole chain (``GET /api/v1/audit/chain``), to verify here."""
    data = ask_json(args, "/api/v1/audit/chain", CHAIN_TIMEOUT)
    try:
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise ValueError("no entries")
        highest = data.get("highestId")
        entries = [chain_entry_of(doc) for doc in data["entries"]]
        return entries, None if highest is None else int(highest)
    except (TypeError, ValueError) as exc:
        raise GitorchError(
            f"the daemon at {args.server} answered something that is not an audit chain: {exc}"
        ) from None


def _filtered(args: argparse.Namespace) -> bool:
    return bool(args.service or args.kind or args.since is not None)


def _expected(values: list[str]) -> dict[int, str]:
    expected: dict[int, str] = {}
    for value in values:
        match = _EXPECT.match(value.strip().lower())
        if match is None:
            raise ConfigError(
                f"--expect {value!r}: expected ID:HASH as `gitorch audit --head` prints it"
            )
        expected[int(match.group(1))] = match.group(2)
    return expected


def _head(verdict: Verdict, fmt: str) -> int:
    head = verdict.head
    if fmt == "json":
        print_json({"id": head.id, "hash": head.hash} if head else None)
        return 0
    if head is None:
        stderr().print("the audit log has no chained entry yet")
        return 1
    stdout().print(f"{head.id}:{head.hash}")
    return 0


def _verdict(verdict: Verdict, fmt: str) -> int:
    if fmt == "json":
        doc: dict[str, Any] = {
            "intact": verdict.intact,
            "entries": verdict.entries,
            "unchained": verdict.unchained,
            "head": {"id": verdict.head.id, "hash": verdict.head.hash} if verdict.head else None,
            "problems": [{"entry": p.entry, "message": p.message} for p in verdict.problems],
        }
        print_json(doc)
        return 0 if verdict.intact else 1
    if not verdict.intact:
        stdout().print(
            f"[red]audit log tampered[/]: {len(verdict.problems)} problem(s) in "
            f"{verdict.entries} entries"
        )
        for problem in verdict.problems:
            stdout().print(f"  {escape(problem.message)}")
        return 1
    head = verdict.head
    older = (
        f" ({verdict.unchained} written before the chain existed, sealed by it)"
        if verdict.unchained
        else ""
    )
    where = f"; head {head.id}:{head.hash}" if head is not None else ""
    count = f"{verdict.entries} entr{'y' if verdict.entries == 1 else 'ies'}"
    stdout().print(f"[green]audit log intact[/]: {count}{older}{where}")
    return 0
