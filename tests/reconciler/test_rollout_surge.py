"""A RollingUpdate never runs more than ``replicas + maxSurge`` replicas, not even for a
moment (found by the chaos soak, bench/soak.py).

At the ceiling the strategy stops an old replica and starts a new one in the same pass,
counting the room the stop makes; the executor used to start the new replica before it
drained the old one, so for the length of the drain the service ran one replica more
than maxSurge allows (4 of ``replicas: 2, maxSurge: 1``). The processes are counted from
/proc every few milliseconds during the rollout, not from gitorch's own records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import docker
import pytest
from reconciler_helpers import (
    Cluster,
    LoadClient,
    commit,
    converged,
    docker_service,
    process_service,
    wait_for,
)
from replica_procs import replica_processes

from gitorch.runtime.base import LABEL_CLUSTER, LABEL_SERVICE


def test_rolling_update_stays_within_max_surge(cluster: Cluster) -> None:
    port = cluster.port
    _rolls_within_max_surge(
        cluster,
        lambda version: process_service("api", port=port, replicas=2, version=version),
        lambda name: sum(1 for r in replica_processes(name) if r.service == "api"),
    )


@pytest.mark.docker
def test_rolling_update_stays_within_max_surge_docker(docker_cluster: Cluster) -> None:
    """The executor starts the next replicas once the old containers have exited, while
    the engine cleans up after them and removes them: the bound is of *running*
    containers (the engine's own count), and no exited container is left behind."""
    port = docker_cluster.port
    engine = docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=30)

    def running(name: str) -> int:
        labels = [f"{LABEL_CLUSTER}={name}", f"{LABEL_SERVICE}=api"]
        return len(engine.containers(filters={"label": labels}))

    try:
        name = _rolls_within_max_surge(
            docker_cluster,
            lambda version: docker_service(
                "api", port=port, image=f"gitorch-example/api:{version}", replicas=2
            ),
            running,
            versions=("1", "2", "1"),
        )
        labels = [f"{LABEL_CLUSTER}={name}", f"{LABEL_SERVICE}=api"]
        left = engine.containers(all=True, filters={"label": labels})
        assert [c["State"] for c in left] == ["running", "running"], left
    finally:
        engine.close()


def _rolls_within_max_surge(
    cluster: Cluster,
    manifest: Callable[[str], str],
    count: Callable[[str], int],
    versions: tuple[str, ...] = ("1", "2", "3"),
) -> str:
    """Deploy ``versions[0]`` (2 replicas, maxSurge 1), roll to each next one under load
    while ``count(cluster name)`` is sampled; the cluster's name."""
    sha1 = commit(cluster.repo, {"api.yaml": manifest(versions[0])}, "v1")
    daemon = cluster.daemon()
    wait_for("v1 converged", lambda: converged(daemon.service("api"), sha1, 2), 60)
    name = cluster.cluster_name()
    assert name is not None

    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, count(name))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # Under load, so that every drain waits for requests in flight.
        with LoadClient(cluster.port, threads=4) as load:
            for step, version in enumerate(versions[1:], start=2):
                sha = commit(cluster.repo, {"api.yaml": manifest(version)}, f"v{step}")
                wait_for(
                    f"v{step} converged",
                    lambda sha=sha: converged(daemon.service("api"), sha, 2),
                    60,
                    describe=daemon.log_tail,
                )
    finally:
        stop.set()
        sampler.join(5)
    assert load.failures == [], load.failures[:5]
    assert most == 3, f"api ran {most} replicas at once; replicas 2 + maxSurge 1 allow 3"
    return name
