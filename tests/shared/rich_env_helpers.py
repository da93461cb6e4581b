"""What the tests of output written without rich compare against: rich's own console on
a stream that says whether it is a terminal, under the environment variables rich reads."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import gitorch.commands.common as common

if TYPE_CHECKING:
    import pytest
    from rich.console import Console

#: The variables rich's colour and width decisions read; a case sets some, clears the rest.
RICH_VARIABLES = ("TTY_COMPATIBLE", "FORCE_COLOR", "NO_COLOR", "TERM", "COLORTERM", "COLUMNS")


class FakeTerminal(io.StringIO):
    """A text stream that is a terminal (``tty``) or not, as ``isatty`` says."""

    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def rich_environment(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Set ``env`` and clear the other variables rich reads."""
    for name in RICH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def gitorch_console(stream: io.StringIO) -> Console:
    """A console made as gitorch's stdout console is, writing to ``stream``."""
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=True, width=common._width(stream))
