"""A RollingUpdate never runs more than ``replicas + maxSurge`` replicas, not even for a
moment (found by the chaos soak, bench/soak.py).

At the ceiling the strategy stops an old replica and starts a new one in the same pass,
counting the room the stop makes; the executor used to start the new replica before it
drained the old one, so for the length of the drain the service ran one replica more
than maxSurge allows (4 of ``replicas: 2, maxSurge: 1``). The processes are counted from
/proc every few milliseconds during the rollout, not from gitorch's own records.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

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


class RunningByEvents:
    """How many of the service's containers run, from the engine's ``start`` and ``die``
    events: a container whose process has exited no longer runs, even while the engine
    still cleans up after it and lists it as running (``docker ps`` shows Docker 20.10's
    state only once the clean-up is done, ~0.5-1 s after the exit)."""

    def __init__(self, engine: docker.APIClient) -> None:
        self.engine = engine
        self.live: set[str] = set()
        self.stream: object = None
        self.lock = threading.Lock()

    def __call__(self, name: str) -> int:
        if self.stream is None:
            labels = [f"{LABEL_CLUSTER}={name}", f"{LABEL_SERVICE}=api"]
            filters = {"type": "container", "label": labels, "event": ["start", "die"]}
            self.stream = stream = self.engine.events(decode=True, filters=filters)
            with self.lock:  # the events from here on, then what runs already
                self.live |= {c["Id"] for c in self.engine.containers(filters={"label": labels})}
            threading.Thread(target=self._follow, args=(stream,), daemon=True).start()
        with self.lock:
            return len(self.live)

    def _follow(self, stream: Iterator[dict[str, object]]) -> None:
        with contextlib.suppress(Exception):  # closed at the end
            for event in stream:
                with self.lock:
                    if event.get("status") == "start":
                        self.live.add(str(event["id"]))
                    elif event.get("status") == "die":
                        self.live.discard(str(event["id"]))

    def close(self) -> None:
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()


@pytest.mark.docker
def test_rolling_update_stays_within_max_surge_docker(docker_cluster: Cluster) -> None:
    """The executor starts the next replicas once the old containers have exited, while
    the engine cleans up after them and removes them: the bound is of *running*
    containers (from the engine's start and die events), and no exited container is left
    behind."""
    port = docker_cluster.port
    engine = docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=30)
    running = RunningByEvents(engine)
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
        wait_for(
            "the exited containers removed",
            lambda: len(engine.containers(all=True, filters={"label": labels})) == 2,
            30,
        )
        left = engine.containers(all=True, filters={"label": labels})
        assert [c["State"] for c in left] == ["running", "running"], left
    finally:
        running.close()
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
