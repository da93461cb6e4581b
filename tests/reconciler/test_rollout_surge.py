"""A RollingUpdate keeps ``replicas + maxSurge`` replicas in service, and never runs
more than ``replicas + 2 * maxSurge`` (found by the chaos soak, bench/soak.py).

At the ceiling the strategy stops an old replica and starts a new one in the same pass.
The executor used to start the new replica before it drained the old one, unasked, so
for the length of the drain the service ran one replica more than maxSurge allows with
the old one still in the rotation. Since issue 20 the rule is Kubernetes': a replica
withdrawn from the rotation is terminating and does not count against maxSurge, so the
new one starts beside the old one's drain and stop (``Stop.terminating_frees_room``),
and while that stop lasts up to ``maxSurge`` more replicas run than are in service. That
bound is what is checked here, on the processes counted from /proc (or the containers
from the engine's events) every few milliseconds, not on gitorch's own records; with
3 replicas and maxSurge 1 a rollout that ignored maxSurge would run 6.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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

# The strategy's bounds on running replicas: the store keeps what any pass keeps.
pytestmark = pytest.mark.store_incidental

REPLICAS = 3
SURGE = 1  # the helpers' manifests' maxSurge

#: A server that answers everything 200 and, on SIGTERM, lingers LINGER_S before it
#: exits (a replica flushing on its way out).
LINGERING_APP = """\
import http.server, os, signal, threading, time

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

def leave(*_):
    time.sleep(float(os.environ["LINGER_S"]))
    os._exit(0)

signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=leave).start())
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_rolling_update_stays_within_max_surge(cluster: Cluster) -> None:
    port = cluster.port
    _rolls_within_max_surge(
        cluster,
        lambda version: process_service("api", port=port, replicas=REPLICAS, version=version),
        lambda name: sum(1 for r in replica_processes(name) if r.service == "api"),
    )


def test_a_terminating_replica_does_not_hold_the_surge(cluster: Cluster, tmp_path: Path) -> None:
    """The old replica a pass stops to make room lingers 1.5 s after its SIGTERM; the new
    one the same pass starts does not wait for that exit: for a while replicas + 2 *
    maxSurge run (2 in service, the terminating one, the new one), never more. Before,
    the executor started the new replica once the old one had exited (at most 3)."""
    app = tmp_path / "lingering.py"
    app.write_text(LINGERING_APP)
    port = cluster.port
    most = _rolls_within_max_surge(
        cluster,
        lambda version: process_service(
            "api",
            port=port,
            replicas=2,
            version=version,
            command=[sys.executable, str(app)],
            env={"LINGER_S": "1.5"},
        ),
        lambda name: sum(1 for r in replica_processes(name) if r.service == "api"),
        versions=("1", "2"),
        replicas=2,
    )[1]
    assert most == 2 + 2 * SURGE, f"at most {most} ran: the new replica waited for the exit"


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
    """The executor starts the next replicas beside the old containers' drain and stop,
    and removes the old ones once the new ones have started: the bound is of *running*
    containers (from the engine's start and die events), and no exited container is left
    behind."""
    port = docker_cluster.port
    engine = docker.APIClient(base_url="unix:///var/run/docker.sock", timeout=30)
    running = RunningByEvents(engine)
    try:
        name = _rolls_within_max_surge(
            docker_cluster,
            lambda version: docker_service(
                "api", port=port, image=f"gitorch-example/api:{version}", replicas=REPLICAS
            ),
            running,
            versions=("1", "2", "1"),
        )[0]
        labels = [f"{LABEL_CLUSTER}={name}", f"{LABEL_SERVICE}=api"]
        wait_for(
            "the exited containers removed",
            lambda: len(engine.containers(all=True, filters={"label": labels})) == REPLICAS,
            30,
        )
        left = engine.containers(all=True, filters={"label": labels})
        assert [c["State"] for c in left] == ["running"] * REPLICAS, left
    finally:
        running.close()
        engine.close()


def _rolls_within_max_surge(
    cluster: Cluster,
    manifest: Callable[[str], str],
    count: Callable[[str], int],
    versions: tuple[str, ...] = ("1", "2", "3"),
    replicas: int = REPLICAS,
) -> tuple[str, int]:
    """Deploy ``versions[0]`` (``replicas``, maxSurge 1), roll to each next one under load
    while ``count(cluster name)`` is sampled; the cluster's name and the most counted."""
    sha1 = commit(cluster.repo, {"api.yaml": manifest(versions[0])}, "v1")
    daemon = cluster.daemon()
    wait_for("v1 converged", lambda: converged(daemon.service("api"), sha1, replicas), 60)
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
                    lambda sha=sha: converged(daemon.service("api"), sha, replicas),
                    60,
                    describe=daemon.log_tail,
                )
    finally:
        stop.set()
        sampler.join(5)
    assert load.failures == [], load.failures[:5]
    assert replicas + SURGE <= most <= replicas + 2 * SURGE, (
        f"api ran {most} replicas at once; replicas {replicas} + maxSurge {SURGE} in "
        f"service allow {replicas + SURGE}, and {SURGE} more terminating"
    )
    return name, most
