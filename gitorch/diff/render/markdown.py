"""``gitorch plan --format markdown``: the plan as a pull-request comment (GitHub flavour).

Layout: a heading with the revision, a summary table, one collapsible ``<details>``
section per changed object (a ```` ```diff ```` block of its field changes, its rollout
steps, a placements table, the replicas that cannot be placed and why), then drift,
warnings, the dependsOn order, and the plan digest that ``apply --expect-plan`` pins.

Safety of user values (a comment must not break, run HTML, ping people or link issues):

* inside a diff block every line starts with ``+``, ``-`` or a space and values are JSON
  (one line each), so no line can close the fence; the fence is still made longer than any
  run of backticks in the block. Code blocks are not parsed for HTML, so ``</details>``
  inside one is just text;
* a field change is two lines, ``- path: before`` and ``+ path: after``, because GitHub's
  diff highlighting colours only ``+`` and ``-`` (a ``~`` line would stay grey);
* everywhere else, :func:`md_escape` turns ``<``, ``>``, ``&`` into entities and puts a
  backslash before the markdown punctuation (``*``, ``_``, `````, ``|``, ``#``, ``@``,
  ``:``, ``$``...), so text is shown as typed: no emphasis, table break, heading, mention,
  emoji code or math.
"""

from __future__ import annotations

import html
import re
import shlex

from gitorch.diff.fields import FieldChange
from gitorch.diff.plan import ObjectChange, Plan
from gitorch.diff.render.text import (
    drift_counts,
    format_value,
    short,
    summary_line,
    visible_fields,
)

_VERB = {"create": "create", "update": "update", "delete": "delete"}
_SYMBOL = {"create": "+", "update": "~", "delete": "-"}
# Characters that mean something anywhere in a GitHub markdown line (emphasis, code, links,
# tables, strikethrough, math, issue references); a backslash before ASCII punctuation is
# always a valid CommonMark escape.
_MD_INLINE = re.compile(r"([\\`*_\[\]|$~#])")
# What only matters at the start of a line: list markers, block quote, heading underline.
_MD_LEADING = re.compile(r"^([-+>=])|^(\d+)([.)])")
_MENTION = re.compile(r"@(?=[A-Za-z0-9])")
_EMOJI = re.compile(r":(?=[A-Za-z0-9_+-]+:)")
_BACKTICKS = re.compile(r"`+")
#: Zero-width joiner: splits ``@name`` and ``:code:`` so GitHub neither pings nor draws.
_ZWJ = "\u200d"


def md_escape(text: str) -> str:
    """Text shown as typed in GitHub markdown (outside code blocks), on one line.

    ``<``, ``>``, ``&`` become entities (no HTML, no closing ``</details>``); markdown
    punctuation gets a backslash; ``@name`` and ``:emoji:`` get an invisible joiner, since
    GitHub turns those into mentions and pictures after markdown (a backslash is not
    enough there). The exact value is always in the diff block and in the JSON plan.
    """
    text = " ".join(text.splitlines())
    text = html.escape(text, quote=False)  # & < > first: the escapes below add no &
    text = _MD_INLINE.sub(r"\\\1", text)
    text = _MD_LEADING.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\{m[3]}", text)
    text = _MENTION.sub("@" + _ZWJ, text)
    return _EMOJI.sub(":" + _ZWJ, text)


def code(text: str) -> str:
    """An inline code span that shows ``text`` as typed, whatever backticks it holds."""
    text = " ".join(text.splitlines())
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fence(lines: list[str], info: str = "") -> list[str]:
    """A fenced code block whose fence no content line can close."""
    longest = max((len(run) for line in lines for run in _BACKTICKS.findall(line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{info}", *lines, fence]


def diff_lines(change: ObjectChange) -> list[str]:
    """The object's field changes as ``diff`` lines (values JSON, secrets redacted)."""
    fields, hidden = visible_fields(change)
    lines: list[str] = []
    for field in fields:
        lines.extend(_field_lines(field))
    if hidden:
        lines.append(f"  ({hidden} empty field{'s' if hidden != 1 else ''} not shown)")
    return lines


def _field_lines(field: FieldChange) -> list[str]:
    if field.op == "add":
        return [f"+ {field.path}: {format_value(field.after, field.sensitive)}"]
    if field.op == "remove":
        return [f"- {field.path}: {format_value(field.before, field.sensitive)}"]
    return [
        f"- {field.path}: {format_value(field.before, field.sensitive)}",
        f"+ {field.path}: {format_value(field.after, field.sensitive)}",
    ]


def _summary_table(plan: Plan) -> list[str]:
    counts = plan.summary
    drift = drift_counts(plan)
    drift_cell = str(len(plan.drift))
    if plan.drift:
        parts = [f"{n} {policy}" for policy, n in sorted(drift.items())]
        drift_cell += f" ({', '.join(parts)})"
    return [
        "| create | update | delete | drift | unschedulable | unchanged |",
        "| ---: | ---: | ---: | :--- | ---: | ---: |",
        f"| {counts['create']} | {counts['update']} | {counts['delete']} | {drift_cell} "
        f"| {counts['unschedulable']} | {counts['unchanged']} |",
    ]


def _object_section(plan: Plan, change: ObjectChange) -> list[str]:
    action = _VERB.get(change.action, change.action)
    detail = ""
    if change.action == "update":
        detail = ", replicas replaced" if change.replaces_replicas else ", in place"
    summary = (
        f"<code>{html.escape(_SYMBOL.get(change.action, '?'))} {html.escape(action)}</code> "
        f"<b>{html.escape(change.kind)}/{html.escape(change.name)}</b>{html.escape(detail)}"
    )
    # Updates and deletes are what reviewers must see: open them; creates can be long.
    opened = " open" if change.action != "create" else ""
    out = [f"<details{opened}><summary>{summary}</summary>", ""]
    if change.applied_revision:
        out += [f"Applied now: {code(short(change.applied_revision))}", ""]
    lines = diff_lines(change)
    if lines:
        out += [*_fence(lines, "diff"), ""]
    if change.rollout is not None and change.rollout.steps:
        out += [f"**Rollout** ({md_escape(change.rollout.strategy)}):", ""]
        out += [f"{n}. {md_escape(step)}" for n, step in enumerate(change.rollout.steps, 1)]
        out.append("")
    placements = [p for p in plan.placements if p.service == change.name]
    if change.kind == "Service" and placements:
        out += ["**Placements**:", "", "| replica | node |", "| --- | --- |"]
        out += [
            f"| {md_escape(p.replica)} | {md_escape(p.node)}"
            + (f" (preempts {md_escape(', '.join(p.victims))})" if p.victims else "")
            + " |"
            for p in placements
        ]
        out.append("")
    stuck = [u for u in plan.unschedulable if u.service == change.name]
    if change.kind == "Service" and stuck:
        out += [f"**Cannot be placed** ({len(stuck)} replica(s)):", ""]
        for item in stuck:
            out.append(f"- {md_escape(item.replica)}")
            out += [f"  - {md_escape(reason)}" for reason in item.reasons]
            if item.counts:
                counts = ", ".join(
                    f"{count} node{'s' if count != 1 else ''}: {reason}"
                    for reason, count in sorted(item.counts.items(), key=lambda kv: (-kv[1], kv[0]))
                )
                out.append(f"  - _{md_escape(counts)}_")
        out.append("")
    out += ["</details>", ""]
    return out


def render_markdown(plan: Plan) -> str:
    """The plan as a GitHub pull-request comment (markdown text, newline-terminated)."""
    out = [
        "<!-- gitorch-plan -->",  # lets a bot find and update its own comment
        f"### gitorch plan for {code(short(plan.revision))}",
        "",
    ]
    where = f" · path {code(plan.path)}" if plan.path else ""
    base = (
        f"applied now: {code(short(plan.base_revision))}"
        if plan.base_revision
        else "nothing applied yet"
    )
    out += [f"Revision {code(plan.revision)}{where} · {base}", ""]
    out += [*_summary_table(plan), ""]
    for change in plan.changes:
        out += _object_section(plan, change)
    orphans = [u for u in plan.unschedulable if u.service not in {c.name for c in plan.changes}]
    if orphans:
        out += ["#### Cannot be placed", ""]
        for item in orphans:
            out.append(f"- {md_escape(item.service)}: {md_escape(item.replica)}")
            out += [f"  - {md_escape(reason)}" for reason in item.reasons]
        out.append("")
    if plan.drift:
        out += [
            "#### Drift",
            "",
            "Live state differs from what was applied:",
            "",
            "| service | drift policy | what | replicas |",
            "| --- | --- | --- | --- |",
        ]
        for drift in plan.drift:
            out.append(
                f"| {md_escape(drift.service)} | {md_escape(drift.policy)} "
                f"| {md_escape(drift.message)} | {md_escape(', '.join(drift.replicas))} |"
            )
        out.append("")
    if plan.autoscaled:
        out += ["#### Autoscaled", "", "Counts the autoscaler owns (not drift):", ""]
        for scaled in plan.autoscaled:
            out.append(f"- {md_escape(scaled.describe())}")
            if scaled.reason:
                out.append(f"  - last decision: {md_escape(scaled.reason)}")
            out += [f"  - recommended: {md_escape(line)}" for line in scaled.recommendations]
        out.append("")
    if plan.actions:
        out += [
            "#### Next pass",
            "",
            "What the reconciler does now, in this order:",
            "",
            "| action | service | what | why |",
            "| --- | --- | --- | --- |",
        ]
        for action in plan.actions:
            what = action.describe().split(": ", 1)[0]
            why = action.reason
            out.append(
                f"| {md_escape(action.verb)} | {md_escape(action.service)} "
                f"| {md_escape(what)} | {md_escape(why)} |"
            )
        out.append("")
    if plan.warnings:
        out += ["#### Warnings", ""]
        out += [f"- :warning: {md_escape(w)}" for w in plan.warnings]
        out.append("")
    if len(plan.order) > 1:  # one wave: nothing waits for anything
        out += ["#### Rollout order (dependsOn)", ""]
        out += [f"{n}. {md_escape(', '.join(wave))}" for n, wave in enumerate(plan.order, 1)]
        out.append("")
    out += [
        f"**{md_escape(summary_line(plan))}**",
        "",
        f"Plan digest: `{plan.digest}`  ",
        f"Apply exactly this plan: `{apply_command(plan)}`",
        "",
    ]
    return "\n".join(out)


#: The revision of a plan of the working tree (``--worktree``), as the sources name it.
WORKTREE_REVISION = "worktree"


def apply_command(plan: Plan) -> str:
    """The ``gitorch apply`` that applies this plan's commit and folder, refusing any other
    plan: the digest covers the revision and the path, so without ``--ref`` and ``--path``
    (the repo's HEAD branch, its root) the same command would plan something else. The
    state and runtime options are the operator's, as they were for the plan."""
    where = "--worktree" if plan.revision == WORKTREE_REVISION else f"--ref {plan.revision}"
    path = f" --path {shlex.quote(plan.path)}" if plan.path else ""
    return f"gitorch apply {where}{path} --expect-plan {plan.digest[:12]}"
