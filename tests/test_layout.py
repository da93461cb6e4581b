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
