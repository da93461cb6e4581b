"""Fixtures for the live-state tests: a state dir, its cluster, real runtimes per driver.

``live_node`` is parametrised over both drivers, like the runtime contract suite's
``runtime_kit``; ``kit.idle(...)`` / ``kit.api(...)`` give the same kind of workload for
either driver (see :class:`live_helpers.LiveNodeKit`). Every fixture that starts replicas
removes them afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from live_helpers import (
    DOCKER_ENDPOINT,
    LiveNodeKit,
    docker_client,  # noqa: F401 (fixture)
    example_images,  # noqa: F401 (fixture)
    process_kit,
    remove_cluster,
    test_images,  # noqa: F401 (fixture)
)

from gitorch.live import NodeTarget, cluster_name
from gitorch.state import StateStore


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def cluster(state_dir: Path) -> str:
    """The cluster of ``state_dir``, named exactly as the CLI names it."""
    return cluster_name(state_dir)


@pytest.fixture
def store(state_dir: Path) -> Iterator[StateStore]:
    with StateStore(state_dir) as opened:
        yield opened


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def live_node(
    request: pytest.FixtureRequest, state_dir: Path, cluster: str
) -> Iterator[LiveNodeKit]:
    """One real node of either driver, emptied of this cluster's replicas afterwards."""
    if request.param == "docker":
        images: dict[str, str] = request.getfixturevalue("test_images")
        api_image: str = request.getfixturevalue("example_images")
        from gitorch.runtime.docker import DockerRuntime

        kit = LiveNodeKit(
            "docker",
            NodeTarget(name="node-d", driver="docker", endpoint=DOCKER_ENDPOINT),
            DockerRuntime("node-d", DOCKER_ENDPOINT, timeout=15.0),
            idle_image=images["graceful"],
            api_image=api_image,
        )
    else:
        kit = process_kit(state_dir)
    try:
        yield kit
    finally:
        remove_cluster(kit.runtime, cluster)


@pytest.fixture
def process_node(state_dir: Path, cluster: str) -> Iterator[LiveNodeKit]:
    """A process node only (for what does not depend on the driver)."""
    kit = process_kit(state_dir)
    try:
        yield kit
    finally:
        remove_cluster(kit.runtime, cluster)


@pytest.fixture
def docker_node(request: pytest.FixtureRequest, cluster: str) -> Iterator[LiveNodeKit]:
    """A Docker node on the real engine (FAILS when the engine does not answer)."""
    from gitorch.runtime.docker import DockerRuntime

    api_image: str = request.getfixturevalue("example_images")

    kit = LiveNodeKit(
        "docker",
        NodeTarget(name="node-d", driver="docker", endpoint=DOCKER_ENDPOINT),
        DockerRuntime("node-d", DOCKER_ENDPOINT, timeout=15.0),
        api_image=api_image,
    )
    try:
        yield kit
    finally:
        remove_cluster(kit.runtime, cluster)
