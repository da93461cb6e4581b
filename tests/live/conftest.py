"""Fixtures for the live-state tests: a state dir, its cluster, real runtimes per driver.

``live_node`` is parametrised over both drivers, like the runtime contract suite's
``runtime_kit``; ``kit.service(...)`` gives the same kind of workload for either driver.
Every fixture that starts replicas removes them afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from live_helpers import (
    DOCKER_ENDPOINT,
    EXAMPLE_API_APP,
    docker_client,  # noqa: F401 (fixture)
    example_images,  # noqa: F401 (fixture)
    remove_cluster,
    service_yaml,
    test_images,  # noqa: F401 (fixture)
)

from gitorch.commands.cluster import runtime_dir
from gitorch.live import NodeTarget, cluster_name
from gitorch.runtime.base import Runtime
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


@dataclass
class LiveNodeKit:
    """A real node (target + runtime) and the driver-specific way to describe workloads."""

    driver: str
    target: NodeTarget
    runtime: Runtime
    idle_image: str | None = None
    api_image: str | None = None

    @property
    def name(self) -> str:
        return self.target.name

    def idle(self, name: str, **kwargs: Any) -> str:
        """A manifest of a workload that just runs (no port, no probe)."""
        if self.driver == "docker":
            return service_yaml(name, image=self.idle_image, **kwargs)
        return service_yaml(name, command=["/bin/sleep", "600"], **kwargs)

    def api(self, name: str, *, fail_mode: str = "", **kwargs: Any) -> str:
        """The example api with an http readiness probe; ``fail_mode="unhealthy"``: 503."""
        env = {"FAIL_MODE": fail_mode} if fail_mode else {}
        if self.driver == "docker":
            return service_yaml(
                name, image=self.api_image, env=env, probe_path="/cgi-bin/healthz", **kwargs
            )
        env = {"HOST": "127.0.0.1", **env}
        return service_yaml(
            name,
            command=[sys.executable, str(EXAMPLE_API_APP)],
            env=env,
            probe_path="/healthz",
            **kwargs,
        )


def process_kit(state_dir: Path, name: str = "node-p") -> LiveNodeKit:
    """A process node whose bookkeeping is where the CLI looks for it."""
    from gitorch.runtime.process import ProcessRuntime

    return LiveNodeKit(
        "process",
        NodeTarget(name=name, driver="process"),
        ProcessRuntime(name, runtime_dir(state_dir, name)),
    )


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
