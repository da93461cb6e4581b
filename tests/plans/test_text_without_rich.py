"""`gitorch plan`'s text written without a rich console (`DirectOutput`, the escape codes
from `commands.common.escape_codes_around`) is what gitorch's stdout console prints, byte
for byte, for every golden plan on a terminal and a pipe under the variables rich reads."""

from __future__ import annotations

import io

import pytest
from test_golden_plans import CASES, plan_for

import gitorch.commands.common as common
from gitorch.diff.render.text import DirectOutput, render_text

VARIABLES = ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "TERM", "COLORTERM", "COLUMNS")
ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"TERM": "xterm-256color", "COLORTERM": "truecolor"},
    {"TERM": "dumb"},
    {"NO_COLOR": "1"},
    {"FORCE_COLOR": "1"},
    {"FORCE_COLOR": "1", "NO_COLOR": "1"},
    {"TTY_COMPATIBLE": "0"},
]


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
@pytest.mark.parametrize(
    "env", ENVIRONMENTS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "bare"
)
def test_direct_text_is_what_the_console_prints(
    monkeypatch: pytest.MonkeyPatch, tty: bool, env: dict[str, str]
) -> None:
    from rich.console import Console

    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for case in CASES:
        plan = plan_for(case)
        expected = _Stream(tty)
        render_text(
            plan,
            Console(file=expected, highlight=False, soft_wrap=True, width=common._width(expected)),
        )
        ours = _Stream(tty)
        around = common.escape_codes_around(ours)
        assert around is not None

        def console(stream: _Stream = ours) -> Console:
            return Console(
                file=stream, highlight=False, soft_wrap=True, width=common._width(stream)
            )

        render_text(plan, DirectOutput(ours, around, console))
        assert ours.getvalue() == expected.getvalue(), case
