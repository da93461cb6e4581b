"""Fixtures for the runtime tests: one kit per driver, test images, per-test clusters.

``runtime_kit`` is parametrised over both drivers; ``kit.spec(kind)`` gives the same
workload for either driver (python scripts in ``apps/`` for the process driver, busybox
images built from ``images/`` for the docker driver), so one behavioural suite
(``test_contract.py``) checks both.

Only fixtures live here: ``RuntimeKit`` and the image builder are in ``runtime_helpers``
(with several test folders in one run, ``conftest`` may name another folder's module).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_helpers import (
    DOCKER_ENDPOINT,
    RuntimeKit,
    build_test_images,
    require_docker_client,
)

from gitorch.runtime.base import Runtime


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    client = require_docker_client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_images(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """kind -> image tag, built once per session (skipped when already up to date)."""
    return build_test_images(docker_client, tmp_path_factory.mktemp("images"))


@pytest.fixture
def cluster() -> str:
    """A cluster name unique to this test: tests never see each other's instances."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["process", pytest.param("docker", marks=pytest.mark.docker)])
def runtime_kit(
    request: pytest.FixtureRequest, cluster: str, tmp_path: Path
) -> Iterator[RuntimeKit]:
    """The Runtime under test (both drivers) with workload specs and cleanup."""
    node = "node-test"
    if request.param == "docker":
        images: dict[str, str] = request.getfixturevalue("test_images")
        from gitorch.runtime.docker import DockerRuntime

        def make() -> Runtime:
            return DockerRuntime(node, DOCKER_ENDPOINT, timeout=15.0, state_dir=tmp_path / "state")

        kit = RuntimeKit("docker", cluster, make(), make, images)
    else:
        from gitorch.runtime.process import ProcessRuntime

        state_dir = tmp_path / "state"
        workdir = tmp_path / "work"
        workdir.mkdir()

        def make() -> Runtime:
            return ProcessRuntime(node, state_dir, workdir=workdir)

        kit = RuntimeKit("process", cluster, make(), make)
    try:
        yield kit
    finally:
        kit.cleanup()
