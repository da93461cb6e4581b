"""Fixtures for the progressive delivery end-to-end tests.

``world``: a Git repo, a state dir, and the daemons a test starts (``world.daemon(plane)``
runs ``gitorch daemon --data-plane PLANE``). At teardown every daemon gets SIGTERM, any
HAProxy still running from the test's state dir is stopped, and every replica of the
test's cluster is removed (process replicas, and containers for Docker tests).
``plane``: the data plane, parametrised builtin | haproxy where a test runs on both.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from progressive_helpers import World, world_in
from reconciler_helpers import build_example_images, require_docker_engine


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
    build_example_images()


@pytest.fixture
def docker_world(world: World, request: pytest.FixtureRequest) -> World:
    """``world`` on the real Docker engine; FAILS (never skips) when no engine answers."""
    require_docker_engine()
    request.getfixturevalue("example_images")
    world.driver = "docker"
    return world
