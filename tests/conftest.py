"""Fixtures shared by every test folder: the session's real etcd cluster.

Only fixtures live here (the cluster itself is ``etcd_helpers.EtcdCluster``); a test that
uses etcd takes a fresh namespace of it (``etcd_helpers.new_namespace``), so one cluster of
three members serves the whole session.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from etcd_helpers import EtcdCluster


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback (Debian's etcd-server), shared by the session."""
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    try:
        yield cluster
    finally:
        cluster.close()
