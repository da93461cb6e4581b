"""Fixtures for the reconciler integration tests.

``cluster``: a Git repo, a state dir, and the daemons a test starts (a
``reconciler_helpers.Cluster``); at teardown every daemon gets SIGTERM and every replica
of the state dir's cluster is removed (process replicas through the process driver's
bookkeeping, containers through the Docker driver), whatever the test did.

Only fixtures live here: test modules import classes from ``reconciler_helpers``, never
from ``conftest`` (with several test folders in one run, ``conftest`` may name another
folder's module).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_helpers import new_namespace
from reconciler_helpers import Cluster, build_example_images, init_repo, require_docker_engine

from gitorch.apply.session import Session, SessionOptions

#: The state stores every daemon test runs on (``$GITORCH_TEST_STATE`` picks one).
BACKENDS = ("sqlite", "etcd")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test of a daemon and its store (the ``cluster`` fixture) runs on each backend,
    as ``test_x[sqlite]`` and ``test_x[etcd]``: one fixture, no copied tests. The Docker
    tests run on SQLite only (the store does not meet the runtime: the process driver's
    runs on etcd cover the daemon's use of it), and so do the tests marked
    ``store_incidental``: long end-to-end runs under load whose subject is traffic,
    scaling or isolation, where the store keeps what any pass keeps (every record kind
    is checked on both backends by tests/state, and the daemon's use of etcd by the tests
    left on both). A test's own parametrization of ``cluster`` wins."""
    if "cluster" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        if "cluster" in str(mark.args[0]):
            return
    chosen = os.environ.get("GITORCH_TEST_STATE")
    backends = [chosen] if chosen else list(BACKENDS)
    marked = metafunc.definition.get_closest_marker
    on_docker = "docker_cluster" in metafunc.fixturenames or marked("docker") is not None
    if (on_docker or marked("store_incidental") is not None) and not chosen:
        backends = ["sqlite"]
    metafunc.parametrize("cluster", backends, indirect=True)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The world of one test; its store is a state directory ("sqlite") or a fresh
    namespace of the session's etcd cluster ("etcd"), as parametrized (see
    :func:`pytest_generate_tests`)."""
    repo = tmp_path / "repo"
    init_repo(repo)
    state = tmp_path / "state"
    store_url = None
    default = os.environ.get("GITORCH_TEST_STATE", "sqlite")
    if getattr(request, "param", default) == "etcd":
        etcd = request.getfixturevalue("etcd_cluster")
        store_url = etcd.url(new_namespace())
    world = Cluster(tmp_path, repo, state, store_url=store_url)
    if store_url is not None:
        world.store_dirs = [etcd.root]
    try:
        yield world
    finally:
        world.teardown()


@pytest.fixture(scope="session")
def example_images() -> None:
    """gitorch-example/api:1 and :2 (examples/images/build.sh: idempotent, fast when built)."""
    build_example_images()


@pytest.fixture
def docker_cluster(cluster: Cluster, request: pytest.FixtureRequest) -> Cluster:
    """``cluster`` on the real Docker engine; FAILS (never skips) when no engine answers."""
    require_docker_engine()
    request.getfixturevalue("example_images")
    cluster.driver = "docker"
    return cluster


@pytest.fixture
def session(cluster: Cluster) -> Iterator[Session]:
    """A process-driver Session on ``cluster``'s state, in the test's process (the
    cluster fixture removes the replicas at teardown; the session leaves them)."""
    opened = Session(
        SessionOptions(state_dir=cluster.state, state=cluster.session_state, runtime="process")
    )
    try:
        yield opened
    finally:
        opened.close()
