"""Fixtures for the source tests: a bare "remote" and a clone that pushes to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sources_helpers import Checkout, Remote, git, init_checkout


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    """An empty bare remote (default branch main) plus a clone ready to push to it."""
    bare = tmp_path / "remote.git"
    bare.mkdir()
    git(bare, "init", "-q", "--bare", "-b", "main")
    work = init_checkout(tmp_path / "work")
    work.git("remote", "add", "origin", bare.as_uri())
    return Remote(bare=bare, work=work)


@pytest.fixture
def checkout(tmp_path: Path) -> Checkout:
    """A local repository with no remote."""
    return init_checkout(tmp_path / "repo")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def closing() -> Iterator[list[object]]:
    """Sources appended here are closed after the test (gitpython keeps helper processes)."""
    opened: list[object] = []
    yield opened
    for source in opened:
        close = getattr(source, "close", None)
        if close is not None:
            close()
