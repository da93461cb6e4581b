"""Fixtures of the state store tests: a fresh store per test, on each backend, and a helper
subprocess.

``store`` and ``location`` are parametrized: every test that takes them runs on SQLite (a
state directory) and on etcd (a fresh namespace of the session's three-member cluster).
Tests of one backend's own machinery (SQLite's schema, WAL, locks and triggers) take
``sqlite_store`` or ``state_dir`` instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd_helpers import new_namespace

from gitorch.state import StateStore

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("state_worker.py")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(params=["sqlite", "etcd"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def location(backend: str, state_dir: Path, request: pytest.FixtureRequest) -> str:
    """Where a test's store lives: a state directory, or an etcd namespace of its own."""
    if backend == "sqlite":
        return str(state_dir)
    return str(request.getfixturevalue("etcd_cluster").url(new_namespace()))


@pytest.fixture
def store(location: str) -> Iterator[StateStore]:
    opened = StateStore(location)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(state_dir: Path) -> Iterator[StateStore]:
    """A SQLite store only: for tests of SQLite's own machinery."""
    opened = StateStore(state_dir)
    yield opened
    opened.close()


def worker_env() -> dict[str, str]:
    """Environment for a worker subprocess: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``state_worker.py`` with arguments; every worker is killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def _spawn(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=worker_env(),
        )
        started.append(proc)
        return proc

    yield _spawn
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
