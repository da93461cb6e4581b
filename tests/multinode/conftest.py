"""Fixtures for the multi-node tests.

``world``: a Git repo, a state dir, the daemons a test starts and the nodes it declares;
at teardown every daemon gets SIGTERM and every replica of the test's cluster is removed
from each node (process nodes through their bookkeeping, the docker node through its
engine). ``engine``: one private dockerd for the session (the example image loaded into
it), started again if a test left it killed, shut down with its bridge at the end.

Only fixtures live here: test modules import ``World`` and the daemon's timings from
``multinode_helpers``, never from ``conftest`` (with several test folders in one run,
``conftest`` may name another folder's module).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from multinode_helpers import IMAGE, World, write_www
from private_dockerd import EngineError, PrivateEngine
from reconciler_helpers import BUILD_SH, free_port, init_repo


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    repo = tmp_path / "repo"
    init_repo(repo)
    write_www(tmp_path)  # the daemon runs in tmp_path: process replicas serve tmp_path/www
    world = World(tmp_path, repo, tmp_path / "state")
    try:
        yield world
    finally:
        world.teardown()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def _private_engine() -> Iterator[PrivateEngine]:
    done = subprocess.run(
        ["/bin/sh", str(BUILD_SH)], capture_output=True, text=True, timeout=300, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"building the example images failed:\n{done.stdout}{done.stderr}")
    engine = PrivateEngine(prefix="mn")
    try:
        try:
            engine.boot()
            engine.load_image(IMAGE)
        except EngineError as exc:
            pytest.fail(str(exc))
        yield engine
    finally:
        engine.shutdown()


@pytest.fixture
def engine(_private_engine: PrivateEngine) -> PrivateEngine:
    """The session's private engine, answering (restarted if a test left it killed)."""
    _private_engine.ensure_running()  # an EngineError is an AssertionError: a failure
    return _private_engine
