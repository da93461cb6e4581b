"""Rigs for the tests of a data plane that outlives the daemon: a world (repo, state,
driver), the daemon on a data plane, and traffic from keep-alive and new-connection
clients that counts every failure."""

from __future__ import annotations

import http.client
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_plane_helpers import stop_data_plane
from listen_ports import free_port
from reconciler_helpers import (
    API_APP,
    DaemonProc,
    LoadClient,
    build_example_images,
    cluster_of,
    commit,
    converged,
    docker_runtime,
    init_repo,
    process_runtime,
    remove_cluster,
    require_docker_engine,
    wait_for,
)

#: The example image (busybox httpd): VERSION comes from the env.
IMAGE = "gitorch-example/api:1"
MANIFEST = "api.yaml"
#: One replica at a time, no loss of capacity.
ROLLING = """\
  strategy:
    type: RollingUpdate
    progressDeadlineSeconds: 120
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
"""


@dataclass
class World:
    """A Git repo of one Service ``api`` (3 replicas), a state dir, the daemons started."""

    root: Path
    repo: Path
    state: Path
    driver: str
    port: int = field(default_factory=free_port)
    daemons: list[DaemonProc] = field(default_factory=list)

    @classmethod
    def make(cls, root: Path, driver: str) -> World:
        if driver == "docker":
            require_docker_engine()
            build_example_images()
        repo = root / "repo"
        init_repo(repo)
        return cls(root, repo, root / "state", driver)

    @property
    def converge_timeout(self) -> float:
        return 90.0 if self.driver == "docker" else 45.0

    def commit(self, version: str, *, slow_start: bool = False, strategy: str = ROLLING) -> str:
        """Commit ``api`` at ``version``; ``slow_start``: each new replica turns ready
        2 s after it starts (a rolling update then takes a while); ``strategy``: the
        ``strategy:`` block (YAML, indented by two spaces)."""
        text = manifest(
            self.driver, self.port, version, initial_delay=2 if slow_start else 0
        ).replace(ROLLING, strategy)
        return commit(self.repo, {MANIFEST: text}, f"api: version {version}")

    def data_plane_processes(self, plane: str) -> int:
        """How many processes name this state dir while its data plane runs: the proxy's
        socket keeper and its coordinator (forked: the same command line; its workers do
        not name it), or HAProxy's master and its worker."""
        return 2

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        stop_data_plane(self.state)
        cluster = cluster_of(self.state)
        remove_cluster(process_runtime(self.state), cluster)
        if self.driver == "docker":
            remove_cluster(docker_runtime(), cluster)


def converged_daemon(world: World, plane: str, sha: str, timeout: float) -> DaemonProc:
    """A new daemon on ``plane``, once it shows ``sha`` converged on 3 ready replicas."""
    daemon = daemon_of(world, plane)
    wait_for(
        f"{sha[:8]} converged",
        lambda: converged(daemon.service("api"), sha, 3),
        timeout,
        describe=daemon.log_tail,
    )
    return daemon


def daemon_of(world: World, plane: str) -> DaemonProc:
    daemon = DaemonProc(
        str(world.repo),
        world.state,
        world.driver,
        interval=2.0,
        resync=0.5,
        extra=("--data-plane", plane),
    )
    world.daemons.append(daemon)
    return daemon


def manifest(driver: str, port: int, version: str, *, initial_delay: int = 0) -> str:
    """Service ``api`` on ``driver``: 3 replicas, rolled one at a time with no loss of
    capacity, probed every second."""
    if driver == "docker":
        runs = f"  image: {IMAGE}\n"
        health = "/cgi-bin/healthz"
    else:
        runs = f'  command: ["{sys.executable}", "{API_APP}"]\n'
        health = "/healthz"
    return (
        "apiVersion: gitorch.dev/v1\n"
        "kind: Service\n"
        "metadata: {name: api}\n"
        "spec:\n"
        f"{runs}"
        f'  env: {{VERSION: "{version}"}}\n'
        "  replicas: 3\n"
        "  ports: [{name: http, containerPort: 8080}]\n"
        f"  expose: {{port: {port}, targetPort: http, protocol: http}}\n"
        "  terminationGracePeriodSeconds: 5\n"
        "  readinessProbe:\n"
        f"    httpGet: {{path: {health}, port: http}}\n"
        f"    initialDelaySeconds: {initial_delay}\n"
        "    periodSeconds: 1\n"
        "    timeoutSeconds: 1\n"
        f"{ROLLING}"
    )


@dataclass(frozen=True)
class Answers:
    """Answers counted so far, by kind of client."""

    keep_alive: int
    fresh: int


class Traffic:
    """Keep-alive clients (:class:`~reconciler_helpers.LoadClient`) and clients opening a
    new connection per request, on one endpoint, until the ``with`` block ends. A
    refused connection, a reset, a timeout or a non-2xx answer is a failure."""

    def __init__(self, port: int, keep_alive: int = 3, fresh: int = 2) -> None:
        self.port = port
        self.keep_alive = LoadClient(port, threads=keep_alive)
        self.fresh_ok = 0
        self.fresh_failures: list[str] = []
        self.fresh_versions: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._fresh, daemon=True) for _ in range(fresh)]

    def __enter__(self) -> Traffic:
        self.keep_alive.__enter__()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        self.keep_alive.stop()

    def answers(self) -> Answers:
        with self._lock:
            return Answers(self.keep_alive.ok, self.fresh_ok)

    def wait_answers(self, count: int, timeout: float) -> Answers:
        """Wait until both kinds of client got ``count`` more answers; the gain."""
        start = self.answers()
        deadline = time.monotonic() + timeout
        while True:
            now = self.answers()
            gain = Answers(now.keep_alive - start.keep_alive, now.fresh - start.fresh)
            if min(gain.keep_alive, gain.fresh) >= count:
                return gain
            if time.monotonic() > deadline:
                raise AssertionError(f"only {gain} answers in {timeout:g} s: {self.failures()}")
            time.sleep(0.02)

    @property
    def versions(self) -> Counter[str]:
        with self._lock:
            return self.keep_alive.versions + self.fresh_versions

    def failures(self) -> list[str]:
        with self._lock:
            return [*self.keep_alive.failures, *self.fresh_failures]

    def assert_no_failure(self) -> None:
        failures = self.failures()
        total = self.keep_alive.total + self.fresh_ok + len(self.fresh_failures)
        assert not failures, f"{len(failures)} of {total} requests failed: {failures[:10]}"

    def _fresh(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Connection": "close"})
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.fresh_failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)
                continue
            finally:
                conn.close()
            with self._lock:
                if 200 <= resp.status < 300:
                    self.fresh_ok += 1
                    version = next(
                        (w.split("=", 1)[1] for w in body.split() if w.startswith("version=")),
                        "?",
                    )
                    self.fresh_versions[version] += 1
                else:
                    self.fresh_failures.append(f"HTTP {resp.status}: {body.strip()[:120]}")
