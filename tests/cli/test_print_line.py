"""`print_line` (validate's line of success, written without rich) writes what rich's
console writes, byte for byte, for a terminal and a pipe under the environment variables
rich reads (TTY_COMPATIBLE, FORCE_COLOR, NO_COLOR, TERM), and lets rich print what it
would change (markup, emoji codes, control characters)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import REPO_ROOT, cli_env
from rich.markup import escape
from rich_env_helpers import FakeTerminal, gitorch_console, rich_environment

import gitorch.commands.common as common

ENVIRONMENTS: list[dict[str, str]] = [
    {},
    {"TERM": "xterm-256color"},
    {"TERM": "xterm-256color", "COLORTERM": "truecolor"},
    {"TERM": "dumb"},
    {"TERM": "unknown"},
    {"NO_COLOR": "1"},
    {"NO_COLOR": ""},
    {"FORCE_COLOR": "1"},
    {"FORCE_COLOR": ""},
    {"FORCE_COLOR": "1", "NO_COLOR": "1"},
    {"FORCE_COLOR": "1", "TERM": "dumb"},
    {"TTY_COMPATIBLE": "0"},
    {"TTY_COMPATIBLE": "1"},
    {"TTY_COMPATIBLE": "0", "FORCE_COLOR": "1"},
    {"COLUMNS": "20"},
]

LINES: list[tuple[str | tuple[str, str], ...]] = [
    (("✓", "green"), " valid: 2000 Services, 0 Nodes, 0 Volumes in 200 files (apps at f27224f)"),
    (("✗", "red"), " 3 problems in 2 files (. at worktree)"),
    (("10:42:07", "dim"),),
    (("hint", "yellow"), ": a long line " + "x" * 300),
    # Characters rich changes: printed by rich, so the same whatever they are.
    ("path [red]x[/] at :rocket: and :+1: a\\",),
    ("tab\there",),
    (("", "green"), "empty styled part"),
]


def _rich_writes(parts: tuple[str | tuple[str, str], ...], stream: FakeTerminal) -> str:
    markup = "".join(
        escape(p) if isinstance(p, str) else f"[{p[1]}]{escape(p[0])}[/]" for p in parts
    )
    gitorch_console(stream).print(markup)
    return stream.getvalue()


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
@pytest.mark.parametrize(
    "env", ENVIRONMENTS, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()) or "bare"
)
def test_print_line_writes_what_rich_writes(
    monkeypatch: pytest.MonkeyPatch, tty: bool, env: dict[str, str]
) -> None:
    rich_environment(monkeypatch, env)
    for parts, err in itertools.product(LINES, (False, True)):
        expected = _rich_writes(parts, FakeTerminal(tty))
        ours = FakeTerminal(tty)
        name = "stderr" if err else "stdout"
        saved = getattr(sys, name), common._stdout, common._stderr
        setattr(sys, name, ours)
        common._stdout = common._stderr = None  # rich's consoles, if used, on this stream
        try:
            common.print_line(*parts, err=err)
        finally:
            setattr(sys, name, saved[0])
            common._stdout, common._stderr = saved[1:]
        assert ours.getvalue() == expected, (parts, err)


def test_validate_succeeds_without_importing_rich(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from gitorch.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('RICH', sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", probe, "validate", "--path", "examples/repo"],
        cwd=REPO_ROOT,
        env={**{k: v for k, v in cli_env(tmp_path).items() if k != "NO_COLOR"}, "FORCE_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[32m✓\x1b[0m valid: " in done.stdout
    assert "RICH []" in done.stdout, done.stdout
