"""Fixtures for the reconciler integration tests.

``cluster``: a Git repo, a state dir, and the daemons a test starts; at teardown every
daemon gets SIGTERM and every replica of the state dir's cluster is removed (process
replicas through the process driver's bookkeeping, containers through the Docker driver),
whatever the test did.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from reconciler_helpers import (
    BUILD_SH,
    DaemonProc,
    cluster_of,
    docker_runtime,
    free_port,
    init_repo,
    process_runtime,
    remove_cluster,
)


@dataclass
class Cluster:
    """One test's world: a repo, a state dir, the daemons it started."""

    root: Path
    repo: Path
    state: Path
    driver: str = "process"
    port: int = field(default_factory=free_port)  # the first service's endpoint
    daemons: list[DaemonProc] = field(default_factory=list)

    def daemon(self, repo: str | None = None, **kwargs: object) -> DaemonProc:
        daemon = DaemonProc(repo or str(self.repo), self.state, self.driver, **kwargs)  # type: ignore[arg-type]
        self.daemons.append(daemon)
        return daemon

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        cluster = cluster_of(self.state)
        remove_cluster(process_runtime(self.state), cluster)
        if self.driver == "docker":
            remove_cluster(docker_runtime(), cluster)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    repo = tmp_path / "repo"
    init_repo(repo)
    state = tmp_path / "state"
    world = Cluster(tmp_path, repo, state)
    try:
        yield world
    finally:
        world.teardown()


@pytest.fixture(scope="session")
def example_images() -> None:
    """gitorch-example/api:1 and :2 (examples/images/build.sh: idempotent, fast when built)."""
    done = subprocess.run(
        ["/bin/sh", str(BUILD_SH)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def docker_cluster(cluster: Cluster, request: pytest.FixtureRequest) -> Cluster:
    """``cluster`` on the real Docker engine; FAILS (never skips) when no engine answers."""
    info = docker_runtime().node_info()
    if not info.ready:
        pytest.fail(f"the Docker engine does not answer: {info.message}")
    request.getfixturevalue("example_images")
    cluster.driver = "docker"
    return cluster
