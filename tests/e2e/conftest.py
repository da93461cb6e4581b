"""Fixtures for the plan end-to-end tests: a state dir and a real node of each driver.

Every fixture that can start replicas removes all of its cluster's replicas afterwards,
whatever the test did.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy import remove_all
from plan_helpers import EXAMPLE_BUILD_SH, Node

from gitorch.live import cluster_name
from gitorch.live.inventory import local_node_name, runtime_dir


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def process_node(state: Path) -> Iterator[Node]:
    """The local node on the process driver, bookkeeping where the CLI looks for it."""
    from gitorch.runtime.process import ProcessRuntime

    name = local_node_name()
    node = Node(name, ProcessRuntime(name, runtime_dir(state, name)), state, cluster_name(state))
    try:
        yield node
    finally:
        remove_all(node.runtime, node.cluster)


@pytest.fixture(scope="session")
def example_images() -> None:
    """The example shop's images (examples/images/build.sh: idempotent, fast when built)."""
    done = subprocess.run(
        ["/bin/sh", str(EXAMPLE_BUILD_SH)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def docker_node(state: Path, request: pytest.FixtureRequest) -> Iterator[Node]:
    """The local node on the real Docker engine; FAILS (never skips) without one."""
    from gitorch.runtime.docker import DEFAULT_ENDPOINT, DockerRuntime

    name = local_node_name()
    runtime = DockerRuntime(name, DEFAULT_ENDPOINT, timeout=15.0)
    info = runtime.node_info()
    if not info.ready:
        pytest.fail(f"Docker engine at {DEFAULT_ENDPOINT} does not answer: {info.message}")
    request.getfixturevalue("example_images")  # after the engine check: a clearer failure
    node = Node(name, runtime, state, cluster_name(state))
    try:
        yield node
    finally:
        remove_all(node.runtime, node.cluster)
