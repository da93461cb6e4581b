"""``gitorch plan`` for people: a terminal rendering in the style of ``terraform plan``.

Layout, top to bottom: the revision planned and the one applied now; every changed object
(``+`` create, ``~`` update, ``-`` delete) with its field changes, rollout steps and where its
new replicas land; replicas that cannot be placed, with each node's reason; drift; the
next pass's actions (exactly what the reconciler executes next, with reasons); warnings;
the dependsOn waves; one summary line.

Choices worth knowing:

* a created or deleted object lists every leaf of its canonical form, as terraform does,
  except empty ones (``{}``, ``[]``, null): they say nothing and would double the listing.
  How many were hidden is said on one line, so nothing is silently dropped;
* values are shown as JSON (strings quoted, control characters escaped), so one value is
  always one line and a value that looks like a path or a number reads as what it is;
  secret values arrive already redacted by :mod:`gitorch.diff.fields` and are shown as
  ``(sensitive value)``;
* colour comes only from rich styles, so rich decides between a terminal, a pipe and
  ``NO_COLOR``. Lines are built as :class:`rich.text.Text` from (text, style) parts rather
  than markup strings: a plan's strings are never parsed, so ``[red]``, ``:rocket:`` or a
  trailing backslash print as typed (``rich.markup.escape`` gets a string ending in a
  backslash wrong unless a tag follows it, which the property tests found);
* lines are not wrapped by rich (the terminal wraps them), so copied output stays intact;
* a first plan of 2,000 Services is ~10^5 lines, and rich's ``Console.print`` costs
  ~0.1 ms a line (15 s of CPU for that plan). :class:`_Printer` asks rich once per style
  how it writes it (the escape codes before and after, per the console's colour system and
  ``NO_COLOR``) and writes the lines itself, byte for byte what rich would write; a line
  holding a character rich would change (tab, newline, carriage return, the control
  codes rich strips) and a console that records, or is not a plain stream, go through
  rich as before.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import IO, TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # rich loads when a line or a style needs it (DirectOutput)
    from rich.console import Console

from gitorch.diff.fields import SENSITIVE, FieldChange, Leaves
from gitorch.diff.plan import ObjectChange, PlacementItem, Plan, Unschedulable

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


#: ``json.dumps(value, ensure_ascii=False, sort_keys=True)``, its encoder made once (json.dumps
#: makes one per call with these options: a first plan formats ~2,000 lists).
_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


def format_value(value: Any, sensitive: bool = False) -> str:
    """One value on one line: JSON, except a redacted secret, shown as ``(sensitive value)``."""
    if sensitive and value == SENSITIVE:
        return SENSITIVE
    # What json.dumps writes for the common leaves, without building an encoder per call
    # (a first plan formats ~10^5 of them).
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    return _JSON.encode(value)  # json.dumps(value, ensure_ascii=False, sort_keys=True)


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


def _leaf_lines(diff: Leaves) -> tuple[list[str], int]:
    """:func:`field_line` of each leaf :func:`visible_fields` keeps, and how many it
    leaves out, from the leaves themselves (no object per leaf: a first plan has ~10^5)."""
    symbol = _OP_SYMBOL.get(diff.op, "?")
    if diff.sensitive:
        lines = [
            f"{symbol} {path}: {format_value(value, sensitive)}"
            for path, value, sensitive in diff.shown()
            if not _is_empty(value)
        ]
    else:  # nothing redacted (most objects): format_value's commonest cases inline
        lines = [
            f"{symbol} {path}: "
            + (
                encode_basestring(value)
                if type(value) is str
                else int.__repr__(value)
                if type(value) is int
                else format_value(value)
            )
            for path, value in diff.pairs
            if not (value is None or value == {} or value == [])
        ]
    return lines, len(diff) - len(lines)


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
    if counts.get("actions"):
        extras.append(f"next pass: {counts['actions']} replica action(s)")
    if counts.get("volumeActions"):
        extras.append(f"{counts['volumeActions']} volume(s) to create or delete")
    return text + ("; " + ", ".join(extras) if extras else "") + "."


#: A piece of a line: plain text, or (text, rich style).
Part: TypeAlias = str | tuple[str, str]


#: Characters rich changes when it prints (expands, splits or strips): a line holding one
#: is printed by rich itself.
_RICH_CHANGES = re.compile("[\t\n\r\x07\x08\x0b\x0c]")


def _rich_changes(text: str) -> bool:
    """Whether ``text`` holds a character rich changes. Each of them is unprintable, so a
    printable text (nearly every line) is passed by ``str.isprintable``, which reads it
    several times faster than the pattern's search."""
    return not text.isprintable() and _RICH_CHANGES.search(text) is not None


#: A stand-in rich prints unchanged, to learn what it writes around a style.
_MARK = "\ue000"
#: Lines written at once.
_BATCH = 2000


@dataclass(frozen=True)
class DirectOutput:
    """Where a plan's text goes without a rich console made up front: ``file``, and the
    escape codes rich would write before and after a text of each style there
    (``around``; None for a style it does not spell). ``console`` makes the console
    that prints what only rich can (a line rich changes, a style ``around`` does not
    know): rich is imported then, not before (~30 ms of a plan's CPU otherwise)."""

    file: IO[str]
    around: Callable[[str], tuple[str, str] | None]
    console: Callable[[], Console]


class _Printer:
    """Prints lines made of parts, with the settings every line needs: what
    ``console.print(Text.assemble(*parts), soft_wrap=True)`` prints, written directly
    (see the module's docstring) when the console is a plain stream, or to a
    :class:`DirectOutput`."""

    def __init__(self, target: Console | DirectOutput) -> None:
        self._target = target
        self._console: Console | None = None
        if isinstance(target, DirectOutput):
            self.direct = True
        else:
            self._console = target
            self.direct = not (target.record or target.is_jupyter or target.legacy_windows)
        self._around: dict[str, tuple[str, str]] = {}
        self._pending: list[str] = []

    @property
    def file(self) -> IO[str]:
        """The stream written to (a console's, read when written: rich's default is the
        ``sys.stdout`` of the moment)."""
        return self._target.file

    @property
    def console(self) -> Console:
        if self._console is None:
            assert isinstance(self._target, DirectOutput)
            self._console = self._target.console()
        return self._console

    def __call__(self, *parts: Part) -> None:
        if self.direct:
            line = self._line(parts)
            if line is not None:
                self._pending.append(line)
                if len(self._pending) >= _BATCH:
                    self.flush()
                return
        self.flush()
        from rich.text import Text

        # soft_wrap: the terminal wraps, rich neither wraps nor crops (copy-paste stays whole).
        self.console.print(Text.assemble(*parts) if parts else Text(), soft_wrap=True)

    def styled(self, indent: str, texts: list[str], style: str) -> None:
        """``self(indent, (text, style))`` for each of ``texts``, in one go."""
        if not self.direct or _rich_changes("".join(texts)):
            for text in texts:
                self(indent, (text, style))
            return
        before, after = self._styled(style)
        self._pending.extend(
            f"{indent}{before}{text}{after}\n" if text else f"{indent}\n" for text in texts
        )
        if len(self._pending) >= _BATCH:
            self.flush()

    def _line(self, parts: tuple[Part, ...]) -> str | None:
        """The line as rich writes it, newline included; None: rich must print it."""
        pieces: list[str] = []
        around = self._around
        for part in parts:
            if isinstance(part, str):
                pieces.append(part)
            elif part[0]:
                before, after = around.get(part[1]) or self._styled(part[1])
                pieces.append(f"{before}{part[0]}{after}")
        line = "".join(pieces)
        return None if _rich_changes(line) else line + "\n"

    def _styled(self, style: str) -> tuple[str, str]:
        """What rich writes before and after a text of ``style`` on this console."""
        found = self._around.get(style)
        if found is None and isinstance(self._target, DirectOutput):
            found = self._target.around(style)
            if found is not None:
                self._around[style] = found
        if found is None:
            from rich.text import Text

            with self.console.capture() as captured:
                self.console.print(Text(_MARK, style=style), end="", soft_wrap=True)
            before, mark, after = captured.get().partition(_MARK)
            found = (before, after) if mark else ("", "")
            self._around[style] = found
        return found

    def flush(self) -> None:
        if self._pending:
            self.file.write("".join(self._pending))
            self.file.flush()
            self._pending.clear()


class _ByService:
    """The plan's placements and unschedulable replicas by service (each object looks up
    its own: scanning them all per object took seconds for 2,000 Services)."""

    def __init__(self, plan: Plan) -> None:
        self.placements: dict[str, list[PlacementItem]] = defaultdict(list)
        for item in plan.placements:
            self.placements[item.service].append(item)
        self.unschedulable: dict[str, list[Unschedulable]] = defaultdict(list)
        for stuck in plan.unschedulable:
            self.unschedulable[stuck.service].append(stuck)


def _object(out: _Printer, index: _ByService, change: ObjectChange) -> None:
    colour = _COLOUR.get(change.action, "white")
    symbol = _SYMBOL.get(change.action, "?")
    how = _VERB.get(change.action, change.action)
    if change.action == "update":
        how += ", its replicas replaced" if change.replaces_replicas else " in place"
    since: list[Part] = (
        [" ", (f"(applied now: {short(change.applied_revision)})", "dim")]
        if change.applied_revision
        else []
    )
    out(
        "  ",
        (symbol, f"bold {colour}"),
        " ",
        (f"{change.kind}/{change.name}", "bold"),
        f" will be {how}",
        *since,
    )

    if isinstance(change.diff, Leaves):  # a create or delete: one op, many leaves
        lines, hidden = _leaf_lines(change.diff)
        out.styled("      ", lines, _OP_COLOUR.get(change.diff.op, ""))
    else:
        fields, hidden = visible_fields(change)
        for field in fields:
            out("      ", (field_line(field), _OP_COLOUR.get(field.op, "")))
    if hidden:
        out("      ", (f"({hidden} empty field{'s' if hidden != 1 else ''} not shown)", "dim"))

    if change.rollout is not None and change.rollout.steps:
        out("      ", ("rollout", "bold"), f" ({change.rollout.strategy}):")
        for number, step in enumerate(change.rollout.steps, 1):
            out(f"        {number}. {step}")

    placements = index.placements.get(change.name, ())
    if change.kind == "Service" and placements:
        out("      ", ("placements", "bold"), ":")
        for item in placements:
            out(f"        {item.replica} -> ", (item.node, "cyan"))
            for victim in item.victims:
                out("          ", ("preempts ", "red"), victim)
    stuck = index.unschedulable.get(change.name, ())
    if change.kind == "Service" and stuck:
        names = ", ".join(u.replica for u in stuck)
        out(
            "        ",
            (f"{len(stuck)} replica(s) cannot be placed:", "red"),
            f" {names} ",
            ("(see Unschedulable below)", "dim"),
        )
    out()


def _unschedulable(out: _Printer, plan: Plan) -> None:
    out(("Unschedulable replicas", "bold red"), " (no node fits; they will stay pending):")
    for item in plan.unschedulable:
        out("  ", ("!", "red"), f" {item.replica} ", (f"({item.service})", "dim"))
        for reason in item.reasons:
            out(f"      {reason}")
        if item.counts:
            counts = ", ".join(
                f"{count} node{'s' if count != 1 else ''}: {reason}"
                for reason, count in sorted(item.counts.items(), key=lambda kv: (-kv[1], kv[0]))
            )
            out("      ", (counts, "dim"))
    out()


def _drift(out: _Printer, plan: Plan) -> None:
    out(("Drift", "bold magenta"), " (live state differs from what was applied):")
    action = {"correct": "will be corrected", "warn": "reported only", "ignore": "ignored"}
    for item in plan.drift:
        what = action.get(item.policy, item.policy)
        out(
            "  ",
            ("!", "magenta"),
            " ",
            (item.service, "bold"),
            f": {item.message} ",
            (f"(drift: {item.policy}, {what})", "dim"),
        )
        if item.replicas:
            out(f"      replicas: {', '.join(item.replicas)}")
    out()


_ACTION_STYLE = {
    "start": "green",
    "drain": "yellow",
    "remove": "red",
    "roll-back": "magenta",
    "set-traffic": "cyan",
    "wait": "dim",
    "forget": "red",
    "bind": "cyan",
    "create": "green",
    "delete": "red",
    "release": "yellow",
    "missing": "red",
    "start-ingress": "green",
    "remove-ingress": "red",
}


def _autoscaled(out: _Printer, plan: Plan) -> None:
    out(("Autoscaled", "bold"), " (counts the autoscaler owns: not drift):")
    for item in plan.autoscaled:
        out("  ", item.describe())
        if item.reason:
            out("    ", (f"last decision: {item.reason}", "dim"))
        for line in item.recommendations:
            out("    ", f"recommended: {line}")
    out()


def _next_pass(out: _Printer, plan: Plan) -> None:
    out(("Next pass", "bold"), " (what the reconciler does now, in this order):")
    for action in plan.actions:
        verb = action.verb
        out("  ", (f"{verb:>11}", _ACTION_STYLE.get(verb, "")), "  ", action.describe())
    out()


def _ingresses(out: _Printer, plan: Plan) -> None:
    out(("Ingresses", "bold"), " (what each remote host serves after the next pass):")
    for host in plan.ingresses:
        routes = ", ".join(sorted(host.table.routes)) or "nothing"
        out(f"  {host.node} ({host.address}): {routes}")
        for route, why in sorted(host.left_out.items()):
            out("    ", ("not " + route, "yellow"), f": {why}")
    out()


def _order(out: _Printer, plan: Plan) -> None:
    out(
        ("Rollout order", "bold"), " (dependsOn waves; each starts when the one before is healthy):"
    )
    for number, wave in enumerate(plan.order, 1):
        out(f"  {number}. {', '.join(wave)}")
    out()


def render_plain(plan: Plan) -> str:
    """The text ``render_text`` prints where no colour is written (a pipe, a file):
    ``gitorch plan --server``'s text, rendered by the daemon."""
    buffer = io.StringIO()

    def console() -> Console:
        from rich.console import Console

        return Console(file=buffer, color_system=None, highlight=False, soft_wrap=True)

    render_text(plan, DirectOutput(buffer, lambda style: ("", ""), console))
    return buffer.getvalue()


def render_text(plan: Plan, console: Console | DirectOutput) -> None:
    """Print ``plan`` on ``console`` (rich decides colours: terminal, pipe or NO_COLOR),
    or as that console would on a :class:`DirectOutput`."""
    out = _Printer(console)
    try:
        _render(out, plan)
    finally:
        out.flush()  # what was rendered is printed, also when a line failed


def _render(out: _Printer, plan: Plan) -> None:
    where = f" (path {plan.path})" if plan.path else ""
    base: list[Part] = (
        ["applied now: ", (short(plan.base_revision), "cyan")]
        if plan.base_revision
        else ["nothing applied yet"]
    )
    out(
        ("gitorch plan", "bold"),
        ": revision ",
        (short(plan.revision), "bold cyan"),
        f"{where}, ",
        *base,
    )
    out()
    if plan.changes:
        out("gitorch will perform the following actions:")
        out()
        index = _ByService(plan)
        for change in plan.changes:
            _object(out, index, change)
    if plan.unschedulable:
        _unschedulable(out, plan)
    if plan.drift:
        _drift(out, plan)
    if plan.autoscaled:
        _autoscaled(out, plan)
    if plan.actions:
        _next_pass(out, plan)
    if plan.ingresses:
        _ingresses(out, plan)
    if plan.warnings:
        out(("Warnings", "bold yellow"), ":")
        for warning in plan.warnings:
            out("  ", ("!", "yellow"), f" {warning}")
        out()
    if len(plan.order) > 1:  # one wave: nothing waits for anything
        _order(out, plan)
    if plan.unchanged and plan.has_changes:
        out((f"Unchanged: {', '.join(plan.unchanged)}", "dim"))
        out()
    out((summary_line(plan), "bold" if plan.has_changes else "bold green"))
