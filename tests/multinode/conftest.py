"""Fixtures for the multi-node tests.

``world``: a Git repo, a state dir, the daemons a test starts and the nodes it declares;
at teardown every daemon gets SIGTERM and every replica of the test's cluster is removed
from each node (process nodes through their bookkeeping, the docker node through its
engine). ``engine``: one private dockerd for the session (the example image loaded into
it), started again if a test left it killed, shut down with its bridge at the end.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from multinode_helpers import (
    IMAGE,
    EngineError,
    PrivateEngine,
    node_runtimes,
    remove_instances,
    write_www,
)
from reconciler_helpers import (
    BUILD_SH,
    DaemonProc,
    cluster_of,
    free_port,
    init_repo,
)

#: The daemon's timings the multi-node tests are written for.
NODE_GRACE = 3.0
RESYNC = 0.5
INTERVAL = 2.0


@dataclass
class World:
    """One test's cluster: repo, state dir, daemons, and its nodes (for cleanup)."""

    root: Path
    repo: Path
    state: Path
    process_nodes: list[str] = field(default_factory=list)
    docker_nodes: dict[str, str] = field(default_factory=dict)  # name -> endpoint
    daemons: list[DaemonProc] = field(default_factory=list)

    def daemon(self) -> DaemonProc:
        """``gitorch daemon --node-grace 3 --resync 0.5 --interval 2`` on this world."""
        daemon = DaemonProc(
            str(self.repo),
            self.state,
            "process",
            interval=INTERVAL,
            resync=RESYNC,
            extra=("--node-grace", str(NODE_GRACE)),
        )
        self.daemons.append(daemon)
        return daemon

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        cluster = cluster_of(self.state)
        if not cluster:
            return
        for runtime in node_runtimes(self.state, self.process_nodes, self.docker_nodes):
            remove_instances(runtime, cluster)


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
    engine = PrivateEngine()
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
    if not _private_engine.running:
        try:
            _private_engine.start()
        except EngineError as exc:
            pytest.fail(str(exc))
    return _private_engine
