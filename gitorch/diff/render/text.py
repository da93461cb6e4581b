"""``gitorch plan`` for people: a terminal rendering in the style of ``terraform plan``.

Layout, top to bottom: the revision planned and the one applied now; every changed object
(``+`` create, ``~`` update, ``-`` delete) with its field changes, rollout steps and where its
new replicas land; replicas that cannot be placed, with each node's reason; drift; warnings;
the dependsOn waves; one summary line.

Choices worth knowing:

* a created or deleted object lists every leaf of its canonical form, as terraform does,
  except empty ones (``{}``, ``[]``, null): they say nothing and would double the listing.
  How many were hidden is said on one line, so nothing is silently dropped;
* values are shown as JSON (strings quoted, control characters escaped), so one value is
  always one line and a value that looks like a path or a number reads as what it is;
  secret values arrive already redacted by :mod:`gitorch.diff.fields` and are shown as
  ``(sensitive value)``;
* colour comes only from rich markup, so rich decides between a terminal, a pipe and
  ``NO_COLOR``; every string taken from the plan is escaped, and printing is done with
  emoji codes and highlighting off, so a value like ``[red]`` or ``:rocket:`` prints as typed;
* lines are not wrapped by rich (the terminal wraps them), so copied output stays intact.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rich.console import Console
from rich.markup import escape

from gitorch.diff.fields import SENSITIVE, FieldChange
from gitorch.diff.plan import ObjectChange, Plan

_SYMBOL = {"create": "+", "update": "~", "delete": "-"}
_COLOUR = {"create": "green", "update": "yellow", "delete": "red"}
_OP_SYMBOL = {"add": "+", "change": "~", "remove": "-"}
_OP_COLOUR = {"add": "green", "change": "yellow", "remove": "red"}
_VERB = {"create": "created", "update": "updated", "delete": "deleted"}


def short(revision: str | None) -> str:
    """A commit sha as people read it (7 digits); anything else (``worktree``) as is."""
    if revision is None:
        return "nothing"
    is_sha = len(revision) >= 12 and all(c in "0123456789abcdef" for c in revision.lower())
    return revision[:7] if is_sha else revision


def format_value(value: Any, sensitive: bool = False) -> str:
    """One value on one line: JSON, except a redacted secret, shown as ``(sensitive value)``."""
    if sensitive and value == SENSITIVE:
        return SENSITIVE
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _is_empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def field_line(change: FieldChange) -> str:
    """``~ spec.image: "web:1" -> "web:2"`` as plain text (no markup)."""
    symbol = _OP_SYMBOL.get(change.op, "?")
    if change.op == "add":
        shown = format_value(change.after, change.sensitive)
    elif change.op == "remove":
        shown = format_value(change.before, change.sensitive)
    else:
        before = format_value(change.before, change.sensitive)
        after = format_value(change.after, change.sensitive)
        shown = f"{before} -> {after}"
    return f"{symbol} {change.path}: {shown}"


def visible_fields(change: ObjectChange) -> tuple[list[FieldChange], int]:
    """The field changes worth showing, and how many empty leaves were left out.

    Only a whole object created or deleted has empty leaves (``spec.args: []``); an update
    shows everything, since there an empty value is the news (``env: {...} -> {}``).
    """
    if change.action == "update":
        return list(change.diff), 0
    shown = [c for c in change.diff if not _is_empty(c.after if c.op == "add" else c.before)]
    return shown, len(change.diff) - len(shown)


def drift_counts(plan: Plan) -> Counter[str]:
    """Drift items per policy (correct, warn, ignore)."""
    return Counter(item.policy for item in plan.drift)


def summary_line(plan: Plan) -> str:
    """The closing line, without markup."""
    if not plan.has_changes:
        return f"No changes. Live state matches {short(plan.revision)}."
    counts = plan.summary
    text = (
        f"Plan: {counts['create']} to create, {counts['update']} to update, "
        f"{counts['delete']} to delete"
    )
    extras = []
    drift = drift_counts(plan)
    if drift["correct"]:
        extras.append(f"{drift['correct']} drift to correct")
    if drift["warn"]:
        extras.append(f"{drift['warn']} drift to review (not corrected)")
    if plan.unschedulable:
        extras.append(f"{len(plan.unschedulable)} replica(s) unschedulable")
    return text + ("; " + ", ".join(extras) if extras else "") + "."


class _Printer:
    """Prints markup lines with the settings every line needs."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, markup: str = "") -> None:
        # soft_wrap: the terminal wraps, rich neither wraps nor crops (copy-paste stays whole).
        self.console.print(markup, emoji=False, highlight=False, soft_wrap=True)


def _object(out: _Printer, plan: Plan, change: ObjectChange) -> None:
    colour = _COLOUR.get(change.action, "white")
    symbol = _SYMBOL.get(change.action, "?")
    title = escape(f"{change.kind}/{change.name}")
    how = _VERB.get(change.action, change.action)
    if change.action == "update":
        how += ", its replicas replaced" if change.replaces_replicas else " in place"
    since = (
        f" [dim](applied now: {escape(short(change.applied_revision))})[/dim]"
        if change.applied_revision
        else ""
    )
    out(f"  [bold {colour}]{symbol}[/] [bold]{title}[/bold] will be {how}{since}")

    fields, hidden = visible_fields(change)
    for field in fields:
        line = escape(field_line(field))
        out(f"      [{_OP_COLOUR.get(field.op, 'white')}]{line}[/]")
    if hidden:
        out(f"      [dim]({hidden} empty field{'s' if hidden != 1 else ''} not shown)[/dim]")

    if change.rollout is not None and change.rollout.steps:
        out(f"      [bold]rollout[/bold] ({escape(change.rollout.strategy)}):")
        for number, step in enumerate(change.rollout.steps, 1):
            out(f"        {number}. {escape(step)}")

    placements = [p for p in plan.placements if p.service == change.name]
    if change.kind == "Service" and placements:
        out("      [bold]placements[/bold]:")
        for item in placements:
            out(f"        {escape(item.replica)} -> [cyan]{escape(item.node)}[/cyan]")
    stuck = [u for u in plan.unschedulable if u.service == change.name]
    if change.kind == "Service" and stuck:
        names = ", ".join(u.replica for u in stuck)
        out(
            f"        [red]{len(stuck)} replica(s) cannot be placed:[/red] {escape(names)} "
            "[dim](see Unschedulable below)[/dim]"
        )
    out()


def _unschedulable(out: _Printer, plan: Plan) -> None:
    out("[bold red]Unschedulable replicas[/bold red] (no node fits; they will stay pending):")
    for item in plan.unschedulable:
        out(f"  [red]![/red] {escape(item.replica)} [dim]({escape(item.service)})[/dim]")
        for reason in item.reasons:
            out(f"      {escape(reason)}")
        if item.counts:
            counts = ", ".join(
                f"{count} node{'s' if count != 1 else ''}: {reason}"
                for reason, count in sorted(item.counts.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            out(f"      [dim]{escape(counts)}[/dim]")
    out()


def _drift(out: _Printer, plan: Plan) -> None:
    out("[bold magenta]Drift[/bold magenta] (live state differs from what was applied):")
    action = {"correct": "will be corrected", "warn": "reported only", "ignore": "ignored"}
    for item in plan.drift:
        what = action.get(item.policy, item.policy)
        out(
            f"  [magenta]![/magenta] [bold]{escape(item.service)}[/bold]: {escape(item.message)} "
            f"[dim](drift: {escape(item.policy)}, {what})[/dim]"
        )
        if item.replicas:
            out(f"      replicas: {escape(', '.join(item.replicas))}")
    out()


def _order(out: _Printer, plan: Plan) -> None:
    out("[bold]Rollout order[/bold] (dependsOn waves; each starts when the one before is healthy):")
    for number, wave in enumerate(plan.order, 1):
        out(f"  {number}. {escape(', '.join(wave))}")
    out()


def render_text(plan: Plan, console: Console) -> None:
    """Print ``plan`` on ``console`` (rich decides colours: terminal, pipe or NO_COLOR)."""
    out = _Printer(console)
    where = f" (path {escape(plan.path)})" if plan.path else ""
    base = (
        f"applied now: [cyan]{escape(short(plan.base_revision))}[/]"
        if plan.base_revision
        else "nothing applied yet"
    )
    out(
        f"[bold]gitorch plan[/bold]: revision [bold cyan]{escape(short(plan.revision))}[/]{where}, "
        + base
    )
    out()
    if plan.changes:
        out("gitorch will perform the following actions:")
        out()
        for change in plan.changes:
            _object(out, plan, change)
    if plan.unschedulable:
        _unschedulable(out, plan)
    if plan.drift:
        _drift(out, plan)
    if plan.warnings:
        out("[bold yellow]Warnings[/bold yellow]:")
        for warning in plan.warnings:
            out(f"  [yellow]![/yellow] {escape(warning)}")
        out()
    if len(plan.order) > 1:  # one wave: nothing waits for anything
        _order(out, plan)
    if plan.unchanged and plan.has_changes:
        out(f"[dim]Unchanged: {escape(', '.join(plan.unchanged))}[/dim]")
        out()
    colour = "bold" if plan.has_changes else "bold green"
    out(f"[{colour}]{escape(summary_line(plan))}[/]")
