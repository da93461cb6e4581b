"""Fixtures of the HA tests: a world of daemons on the session's etcd, and a private etcd
cluster for the tests that take members away (the shared one must stay whole)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_helpers import EtcdCluster
from ha_helpers import HAWorld


@pytest.fixture
def ha(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[HAWorld]:
    world = HAWorld(tmp_path, etcd_cluster)
    try:
        yield world
    finally:
        world.teardown()


@pytest.fixture
def faulty_etcd(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three members of its own, which the test may kill and restart."""
    cluster = EtcdCluster(tmp_path / "etcd").start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def ha_faulty(tmp_path: Path, faulty_etcd: EtcdCluster) -> Iterator[HAWorld]:
    world = HAWorld(tmp_path / "world", faulty_etcd)
    try:
        yield world
    finally:
        for member in faulty_etcd.members:  # a stopped member back, so daemons can stop
            if member.proc is None:
                faulty_etcd.restart(member)
        world.teardown()
