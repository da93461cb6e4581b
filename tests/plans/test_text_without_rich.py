"""`gitorch plan`'s text written without a rich console (`DirectOutput`, the escape codes
from `commands.common.escape_codes_around`) is what gitorch's stdout console prints, byte
for byte, for every golden plan on a terminal and a pipe under the variables rich reads."""

from __future__ import annotations

from functools import partial

import pytest
from rich_env_helpers import FakeTerminal, gitorch_console, rich_environment
from test_golden_plans import CASES, plan_for

import gitorch.commands.common as common
from gitorch.diff.render.text import DirectOutput, render_text

ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"TERM": "xterm-256color", "COLORTERM": "truecolor"},
    {"TERM": "dumb"},
    {"NO_COLOR": "1"},
    {"FORCE_COLOR": "1"},
    {"FORCE_COLOR": "1", "NO_COLOR": "1"},
    {"TTY_COMPATIBLE": "0"},
]


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
@pytest.mark.parametrize(
    "env", ENVIRONMENTS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "bare"
)
def test_direct_text_is_what_the_console_prints(
    monkeypatch: pytest.MonkeyPatch, tty: bool, env: dict[str, str]
) -> None:
    rich_environment(monkeypatch, env)
    for case in CASES:
        plan = plan_for(case)
        expected = FakeTerminal(tty)
        render_text(plan, gitorch_console(expected))
        ours = FakeTerminal(tty)
        around = common.escape_codes_around(ours)
        assert around is not None
        console = partial(gitorch_console, ours)
        render_text(plan, DirectOutput(ours, around, console))
        assert ours.getvalue() == expected.getvalue(), case
