"""Fixtures for the progressive delivery end-to-end tests.

``world``: a Git repo, a state dir, and the daemons a test starts (``world.daemon(plane)``
runs ``gitorch daemon --data-plane PLANE``). At teardown every daemon gets SIGTERM, any
HAProxy still running from the test's state dir is stopped, and every replica of the
test's cluster is removed (process replicas, and containers for Docker tests).
``plane``: the data plane, parametrised builtin | haproxy where a test runs on both.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from progressive_helpers import World, world_in
from reconciler_helpers import BUILD_SH, docker_runtime


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with world_in(tmp_path) as made:
        yield made


@pytest.fixture(params=["builtin", "haproxy"])
def plane(request: pytest.FixtureRequest) -> str:
    """The data plane a test runs on; HAProxy must be installed (fails, never skips)."""
    if request.param == "haproxy" and shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (.ci/run installs it)")
    return str(request.param)


@pytest.fixture(scope="session")
def example_images() -> None:
    """gitorch-example/api:1 (examples/images/build.sh: idempotent, fast when built)."""
    done = subprocess.run(
        ["/bin/sh", str(BUILD_SH)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def docker_world(world: World, request: pytest.FixtureRequest) -> World:
    """``world`` on the real Docker engine; FAILS (never skips) when no engine answers."""
    info = docker_runtime().node_info()
    if not info.ready:
        pytest.fail(f"the Docker engine does not answer: {info.message}")
    request.getfixturevalue("example_images")
    world.driver = "docker"
    return world
