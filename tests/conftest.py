"""Fixtures shared by every test folder: the session's real etcd cluster; and how the
suite is spread over pytest-xdist's workers (``-n``: see :func:`pytest_collection_modifyitems`).

Only fixtures and collection hooks live here (the cluster itself is
``etcd_helpers.EtcdCluster``); a test that uses etcd takes a fresh namespace of it
(``etcd_helpers.new_namespace``), so one cluster of three members serves each worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_helpers import EtcdCluster

TESTS = Path(__file__).resolve().parent
#: Test folders whose tests all share one worker: one rig of hosts per machine (its
#: namespaces have fixed names), and the tests that start private Docker engines with
#: session-scoped fixtures (one engine for the folder, not one per worker).
ONE_WORKER_FOLDERS = {"multihost": "hosts-rig", "multinode": "private-engine"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``-n N --dist loadgroup``, each test file's tests run on one worker (their
    module fixtures and rigs are built once), and the folders of
    :data:`ONE_WORKER_FOLDERS` each on one worker; a test's own ``xdist_group`` wins."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        relative = Path(item.path).resolve().relative_to(TESTS)
        group = ONE_WORKER_FOLDERS.get(relative.parts[0], relative.as_posix())
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", autouse=True)
def _cli_output_as_through_a_pipe() -> Iterator[None]:
    """pytest-xdist's workers export ``COLUMNS=80``, which the CLI honours (its tables
    shorten their columns to fit): the tests read the CLI's output as a pipe gets it."""
    saved = {name: os.environ.pop(name) for name in ("COLUMNS", "LINES") if name in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback (Debian's etcd-server), shared by the session."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield cluster
    finally:
        cluster.close()
