"""The text and markdown renderers: user strings shown as typed, colours only via rich."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text

from gitorch.diff import DriftItem, FieldChange, ObjectChange, Plan
from gitorch.diff.render import json_text
from gitorch.diff.render.markdown import apply_command, code, md_escape, render_markdown
from gitorch.diff.render.text import render_text, short, summary_line

# One-line text without control characters (a console expands tabs; JSON escapes the rest).
line_text = st.text(
    st.characters(exclude_categories=["Cc", "Cs", "Zl", "Zp"]), min_size=1, max_size=40
)


def plan_with(
    changes: tuple[ObjectChange, ...] = (),
    drift: tuple[DriftItem, ...] = (),
    warnings: tuple[str, ...] = (),
) -> Plan:
    return Plan(
        revision="5d41402abc4b2a76b9719d911017c592ab3f9c11",
        base_revision=None,
        path="",
        changes=changes,
        drift=drift,
        placements=(),
        unschedulable=(),
        order=(),
        warnings=warnings,
    )


def text(plan: Plan, **console: object) -> str:
    buffer = io.StringIO()
    options: dict[str, object] = {"width": 80, "color_system": None, "force_terminal": False}
    options.update(console)
    render_text(plan, Console(file=buffer, **options))  # type: ignore[arg-type]
    return buffer.getvalue()


def update(value: str) -> ObjectChange:
    return ObjectChange(
        "Service", "web", "update", (FieldChange("change", "metadata.annotations.x", "a", value),)
    )


@settings(max_examples=200, deadline=None)
@given(line_text)
def test_text_shows_user_strings_as_typed(value: str) -> None:
    out = text(plan_with(warnings=(value,), drift=(DriftItem("web", "warn", value),)))
    assert f"  ! {value}\n" in out  # the warning line
    assert f"  ! web: {value} (drift: warn" in out


@settings(max_examples=200, deadline=None)
@given(line_text)
def test_text_shows_values_as_json(value: str) -> None:
    import json

    out = text(plan_with(changes=(update(value),)))
    assert f'~ metadata.annotations.x: "a" -> {json.dumps(value, ensure_ascii=False)}\n' in out


def test_markup_and_emoji_codes_are_not_interpreted() -> None:
    hostile = "[red]x[/red] [bold] :rocket: \\[b] end\\"
    out = text(plan_with(warnings=(hostile,)), force_terminal=True, color_system="truecolor")
    assert hostile in re.sub(r"\x1b\[[0-9;]*m", "", out)


def test_colours_on_a_terminal_and_none_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_with(changes=(ObjectChange("Service", "web", "create", ()),))
    coloured = text(plan, force_terminal=True, color_system="standard")
    assert "\x1b[32m" in coloured or "\x1b[1;32m" in coloured  # green create
    monkeypatch.setenv("NO_COLOR", "1")
    plain = text(plan, force_terminal=True, color_system="standard")
    assert "\x1b[3" not in plain  # no foreground colour at all
    assert "+ Service/web will be created" in re.sub(r"\x1b\[[0-9;]*m", "", plain)


def test_sensitive_values_render_unquoted() -> None:
    change = ObjectChange(
        "Service",
        "web",
        "update",
        (
            FieldChange(
                "change", "spec.env.PASSWORD", "(sensitive value)", "(sensitive value)", True
            ),
        ),
    )
    assert "~ spec.env.PASSWORD: (sensitive value) -> (sensitive value)" in text(
        plan_with(changes=(change,))
    )


def test_summary_lines() -> None:
    assert summary_line(plan_with()) == "No changes. Live state matches 5d41402."
    plan = plan_with(
        changes=(ObjectChange("Service", "a", "create"), update("b")),
        drift=(DriftItem("a", "correct", "x"), DriftItem("b", "warn", "y")),
    )
    assert summary_line(plan) == (
        "Plan: 1 to create, 1 to update, 0 to delete; 1 drift to correct, "
        "1 drift to review (not corrected)."
    )


def test_short_revision() -> None:
    assert short("5d41402abc4b2a76b9719d911017c592ab3f9c11") == "5d41402"
    assert short("worktree") == "worktree"
    assert short(None) == "nothing"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_md_escape_leaves_nothing_active(value: str) -> None:
    out = md_escape(value)
    assert "\n" not in out and "\r" not in out
    assert "<" not in out and ">" not in out
    # every markdown-active character is escaped by a backslash
    for match in re.finditer(r"[`*_\[\]|$~#]", out):
        backslashes = len(out[: match.start()]) - len(out[: match.start()].rstrip("\\"))
        assert backslashes % 2 == 1, (value, out)
    assert not re.search(r"@[A-Za-z0-9]", out)  # no live mention (GitHub names are ASCII)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=30))
def test_code_span_holds_any_backticks(value: str) -> None:
    span = code(value)
    ticks = re.match(r"`+", span)
    assert ticks is not None
    fence = ticks.group()
    inner = span[len(fence) : -len(fence)]
    assert span.endswith(fence)
    assert fence not in inner  # the span cannot close early


def test_the_apply_command_names_the_planned_commit_and_folder() -> None:
    """The digest covers the revision and the path: the command under the markdown plan
    pins both, or it would plan the HEAD branch's root and be refused."""
    from dataclasses import replace

    plan = plan_with()
    short = plan.digest[:12]
    assert apply_command(plan) == f"gitorch apply --ref {plan.revision} --expect-plan {short}"
    deploy = replace(plan, path="deploy/prod shop")
    assert apply_command(deploy) == (
        f"gitorch apply --ref {plan.revision} --path 'deploy/prod shop' "
        f"--expect-plan {deploy.digest[:12]}"
    )
    tree = replace(plan, revision="worktree", path="deploy")
    assert apply_command(tree).startswith("gitorch apply --worktree --path deploy --expect-plan ")
    assert f"Apply exactly this plan: `{apply_command(deploy)}`" in render_markdown(deploy)


def test_markdown_survives_a_value_closing_the_comment() -> None:
    value = "```\n</details>\n<script>alert(1)</script> | @someone :rocket:"
    plan = plan_with(
        changes=(update(value), ObjectChange("Service", "api", "delete")),
        drift=(DriftItem("web", "correct", value),),
        warnings=(value,),
    )
    md = render_markdown(plan)
    lines = md.splitlines()
    # Exactly one closing tag per section, each on a line of its own.
    assert lines.count("</details>") == 2
    opening = [i for i, line in enumerate(lines) if line.endswith("diff")]
    assert len(opening) == 1
    closing = lines.index(lines[opening[0]][: -len("diff")], opening[0] + 1)
    outside = lines[: opening[0]] + lines[closing + 1 :]
    assert [line for line in outside if "</details>" in line] == ["</details>"] * 2
    assert not any("<script>" in line or "@someone" in line for line in outside)
    # the diff block: its fence is longer than the value's backticks, and closes once
    fence = lines[opening[0]][: -len("diff")]
    assert len(fence) > 3
    assert lines.count(fence) == 1
    assert md.endswith("\n") and plan.digest in md


@pytest.mark.parametrize(
    "value",
    [
        {"b": [1, 2.5, None, True], "a": {"z": 'é\u2028\x00"\\\n', "y": {}}, "c": []},
        {"replicas": 2**63 - 1, "weights": [0.1, -0.0, 123456789.123]},
        {"huge": 10**30},  # beyond orjson's 64 bits: the standard encoder writes it
        {1: "non-string key"},
    ],
)
def test_json_text_is_the_standard_libraries_indented_text(value: object) -> None:
    assert (
        json_text(value) == json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    )


#: Consoles the text renderer meets: a pipe, a terminal in each colour system, NO_COLOR.
CONSOLES = [
    {"color_system": None, "force_terminal": False},
    {"color_system": "standard", "force_terminal": True},
    {"color_system": "256", "force_terminal": True},
    {"color_system": "truecolor", "force_terminal": True},
    {"color_system": "truecolor", "force_terminal": True, "no_color": True},
]
part_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
styles = st.sampled_from(["", "bold", "dim", "red", "bold cyan", "bold green", "yellow"])
parts = st.lists(st.one_of(part_text, st.tuples(part_text, styles)), max_size=6)


@settings(max_examples=300, deadline=None)
@given(st.lists(parts, max_size=5), st.sampled_from(range(len(CONSOLES))))
def test_direct_lines_are_what_rich_prints(lines: list[list[object]], which: int) -> None:
    """The printer writes lines itself (rich's print is ~0.1 ms a line): byte for byte
    what rich writes, for any text (tabs, newlines, control codes, markup) and style."""
    from gitorch.diff.render.text import _Printer

    direct, through_rich = io.StringIO(), io.StringIO()
    options = {"width": 80, **CONSOLES[which]}
    printer = _Printer(Console(file=direct, **options))  # type: ignore[arg-type]
    assert printer.direct
    reference = Console(file=through_rich, **options)  # type: ignore[arg-type]
    for line in lines:
        printer(*line)  # type: ignore[arg-type]
        reference.print(Text.assemble(*line), soft_wrap=True)  # type: ignore[arg-type]
    printer.flush()
    assert direct.getvalue() == through_rich.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_values_are_formatted_as_json_dumps_writes_them(value: object) -> None:
    from gitorch.diff.render.text import format_value

    assert format_value(value) == json.dumps(value, ensure_ascii=False, sort_keys=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(part_text, max_size=5), styles, st.sampled_from(range(len(CONSOLES))))
def test_styled_lines_are_what_rich_prints(texts: list[str], style: str, which: int) -> None:
    """``styled`` (a create's many field lines at once) writes what one call per line
    would, and so what rich writes, tabs and control codes included."""
    from gitorch.diff.render.text import _Printer

    direct, through_rich = io.StringIO(), io.StringIO()
    options = {"width": 80, **CONSOLES[which]}
    printer = _Printer(Console(file=direct, **options))  # type: ignore[arg-type]
    reference = Console(file=through_rich, **options)  # type: ignore[arg-type]
    printer("before")
    printer.styled("      ", texts, style)
    printer.flush()
    reference.print(Text.assemble("before"), soft_wrap=True)
    for one in texts:
        reference.print(Text.assemble("      ", (one, style)), soft_wrap=True)
    assert direct.getvalue() == through_rich.getvalue()


leaf_values = st.none() | st.booleans() | st.integers() | st.text(max_size=6)
leaf_objects = st.dictionaries(
    st.sampled_from(["image", "env", "args", "labels", "replicas"]),
    st.dictionaries(st.sampled_from(["A", "TOKEN", "x"]), leaf_values | st.just({}), max_size=3)
    | st.lists(leaf_values, max_size=2)
    | leaf_values,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(leaf_objects, st.sampled_from(["add", "remove"]))
def test_created_objects_render_as_their_field_changes(spec: dict[str, object], op: str) -> None:
    """A create's or delete's lines come from its leaves directly: the same lines as its
    field changes one by one (empty values left out, secrets redacted)."""
    from gitorch.diff.fields import object_leaves

    obj = {"metadata": {"name": "web"}, "spec": spec}
    action = "create" if op == "add" else "delete"
    leaves = ObjectChange("Service", "web", action, object_leaves(obj, op))
    one_by_one = ObjectChange("Service", "web", action, tuple(object_leaves(obj, op)))
    assert text(plan_with(changes=(leaves,))) == text(plan_with(changes=(one_by_one,)))
