"""Fixtures for the tests on a rig of hosts.

``rig``: three hosts (network namespaces on a switch, a Docker engine each over TLS, sshd
on one; ``hosts_helpers``), booted once for the session with the example images loaded,
and removed at its end whatever happened: namespaces, engines, sshd, folders. ``fleet``:
one test's repo, state and secrets directory on it; at teardown its daemons stop, its
data plane stops, and every container of its cluster (replicas and ingresses) goes from
every host, its links mended first.

Only fixtures live here: test modules import from ``multihost_helpers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hosts_helpers import Rig, RigError, boot_rig
from multihost_helpers import IMAGES, Fleet
from reconciler_helpers import build_example_images, init_repo


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    build_example_images()
    try:
        booted = boot_rig(IMAGES)
    except RigError as exc:
        pytest.fail(str(exc))
    try:
        yield booted
    finally:
        booted.shutdown()


@pytest.fixture
def fleet(rig: Rig, tmp_path: Path) -> Iterator[Fleet]:
    repo = tmp_path / "repo"
    init_repo(repo)
    fleet = Fleet(rig, tmp_path, repo, tmp_path / "state", tmp_path / "secrets")
    try:
        yield fleet
    finally:
        fleet.teardown()
