"""The test tree itself: pytest's default import mode needs unique module basenames."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def test_test_modules_have_unique_basenames() -> None:
    names = Counter(
        p.name
        for p in Path(__file__).parent.rglob("*.py")
        if p.name not in ("conftest.py", "__init__.py")
    )
    duplicates = sorted(name for name, count in names.items() if count > 1)
    assert duplicates == [], f"rename these, pytest cannot collect both copies: {duplicates}"


def test_the_daemon_file_has_one_name() -> None:
    """``readmodel/daemon_file.py`` repeats the name so that a local status loads no store
    module; the two must never drift apart."""
    from gitorch.readmodel.daemon_file import DAEMON_FILE as READ
    from gitorch.state.layout import DAEMON_FILE as WRITTEN

    assert READ == WRITTEN
