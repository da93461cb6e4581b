"""Helpers for the progressive delivery end-to-end tests.

The daemon, the CLI, Git and cleanup come from ``tests/reconciler/reconciler_helpers`` (by
import). Added here: Services with a Canary / BlueGreen / ABTest strategy, a load client
that sends headers and can be read in windows (:class:`Tally` snapshots), and a watcher
that follows the rollout's phase/step/weight through the daemon's API while load runs.

Named ``progressive_helpers`` so no other test folder's module shadows it.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_plane_helpers import stop_data_plane
from reconciler_helpers import (
    DaemonProc,
    LoadClient,
    cluster_of,
    commit,
    converged,
    docker_runtime,
    docker_service,
    free_port,
    gitorch,
    init_repo,
    process_runtime,
    process_service,
    remove_cluster,
    wait_for,
)

#: The daemon's timings these tests are written for (resync: a pass at least this often).
RESYNC = 0.5
INTERVAL = 2.0

#: The example image (busybox httpd): VERSION, FAIL_MODE, SLOW_MS come from the env.
IMAGE = "gitorch-example/api:1"


# -- the world of one test ------------------------------------------------------------


@dataclass
class World:
    """One test's world: a repo, a state dir, the daemons it started."""

    root: Path
    repo: Path
    state: Path
    driver: str = "process"
    port: int = field(default_factory=free_port)  # the service's endpoint
    daemons: list[DaemonProc] = field(default_factory=list)

    def daemon(self, plane: str) -> DaemonProc:
        """``gitorch daemon --data-plane PLANE --resync 0.5 --interval 2`` on this world.

        The daemon's built-in plane runs on worker processes by default (``--lb-workers
        auto``); ``builtin-thread`` runs it on a thread of the daemon (``--lb-workers 0``)."""
        extra = ("--data-plane", plane)
        if plane == "builtin-thread":
            extra = ("--data-plane", "builtin", "--lb-workers", "0")
        daemon = DaemonProc(
            str(self.repo),
            self.state,
            self.driver,
            interval=INTERVAL,
            resync=RESYNC,
            extra=extra,
        )
        self.daemons.append(daemon)
        return daemon

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        stop_data_plane(self.state)  # it outlives the daemons by design
        cluster = cluster_of(self.state)
        remove_cluster(process_runtime(self.state), cluster)
        if self.driver == "docker":
            remove_cluster(docker_runtime(), cluster)


@contextlib.contextmanager
def world_in(tmp_path: Path) -> Iterator[World]:
    """A :class:`World` in ``tmp_path`` (a fresh Git repo), torn down on the way out."""
    repo = tmp_path / "repo"
    init_repo(repo)
    world = World(tmp_path, repo, tmp_path / "state")
    try:
        yield world
    finally:
        world.teardown()


# -- manifests ---------------------------------------------------------------------------


def with_strategy(base: str, strategy: str) -> str:
    """``base`` (a Service from reconciler_helpers) with its ``strategy:`` block replaced by
    ``strategy`` (YAML indented by two spaces, starting with ``  strategy:``)."""
    head, sep, _ = base.partition("  strategy:\n")
    assert sep, "the base manifest has no strategy block"
    return head + strategy.rstrip("\n") + "\n"


def process_progressive(
    name: str,
    *,
    port: int,
    version: str,
    strategy: str,
    replicas: int = 2,
    env: dict[str, str] | None = None,
) -> str:
    """The example api app on the process driver, with ``strategy`` (see with_strategy)."""
    base = process_service(name, port=port, version=version, replicas=replicas, env=env)
    return with_strategy(base, strategy)


def docker_progressive(
    name: str,
    *,
    port: int,
    version: str,
    strategy: str,
    replicas: int = 2,
    env: dict[str, str] | None = None,
) -> str:
    """The example image on the Docker driver; VERSION (and ``env``) set in the manifest."""
    base = docker_service(name, port=port, image=IMAGE, replicas=replicas)
    all_env = {"VERSION": version, **(env or {})}
    env_line = "  env: {" + ", ".join(f'{k}: "{v}"' for k, v in all_env.items()) + "}\n"
    base = base.replace("  replicas:", env_line + "  replicas:", 1)
    return with_strategy(base, strategy)


# -- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """What a load client had counted at one moment; ``b - a`` is the window between."""

    at: float
    ok: int
    failed: int
    versions: Counter[str]

    @property
    def total(self) -> int:
        return self.ok + self.failed

    def __sub__(self, earlier: Tally) -> Tally:
        return Tally(
            self.at - earlier.at,
            self.ok - earlier.ok,
            self.failed - earlier.failed,
            self.versions - earlier.versions,
        )

    def share(self, version: str) -> float:
        """Percent of the successful answers that came from ``version``."""
        return 100.0 * self.versions[version] / self.ok if self.ok else 0.0


@dataclass
class Load(LoadClient):
    """reconciler_helpers' keep-alive load client, plus request headers and snapshots."""

    headers: dict[str, str] = field(default_factory=dict)

    def _one(self, conn: http.client.HTTPConnection) -> tuple[int, str]:
        conn.request("GET", self.path, headers=self.headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")

    def tally(self) -> Tally:
        with self._lock:
            return Tally(time.monotonic(), self.ok, len(self.failures), Counter(self.versions))

    def wait_requests(self, count: int, timeout: float) -> Tally:
        """Wait until ``count`` more requests were answered (or failed); the tally then."""
        start = self.tally().total

        def enough() -> Tally | None:
            now = self.tally()
            return now if now.total - start >= count else None

        return wait_for(f"{count} more requests", enough, timeout, interval=0.02)


# -- following a rollout ------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One reading of the rollout from the daemon's API."""

    at: float
    phase: str
    step: int | None
    weight: int
    error: str
    tally: Tally | None  # the load client's counts at this reading (when a load was given)


@dataclass
class Watcher:
    """Reads ``service``'s rollout from the daemon's API every ``every`` seconds in a thread,
    so a test can tell when each weight came into force and went out of it."""

    daemon: DaemonProc
    service: str
    load: Load | None = None
    every: float = 0.05
    seen: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                svc = self.daemon.service(self.service)
            except (OSError, AssertionError):
                svc = None
            if svc is not None:
                rollout = svc["rollout"]
                self.seen.append(
                    Seen(
                        time.monotonic(),
                        rollout["phase"],
                        rollout["step"],
                        int(rollout["weight"]),
                        str(rollout.get("lastError") or ""),
                        self.load.tally() if self.load is not None else None,
                    )
                )
            self._stop.wait(self.every)

    def last(self) -> Seen | None:
        return self.seen[-1] if self.seen else None

    def until(
        self, what: str, check: Callable[[Seen], bool], timeout: float, since: float | None = None
    ) -> Seen:
        """Wait for a reading that passes ``check``: the first such one taken after ``since``
        (a ``time.monotonic()``), or after this call when ``since`` is None."""
        begin = len(self.seen) if since is None else 0
        after = -1.0 if since is None else since

        def found() -> Seen | None:
            return next((s for s in self.seen[begin:] if s.at >= after and check(s)), None)

        return wait_for(what, found, timeout, interval=0.02, describe=self.describe)

    def describe(self) -> str:
        changes: list[str] = []
        previous: tuple[Any, ...] | None = None
        for s in self.seen:
            key = (s.phase, s.step, s.weight)
            if key != previous:
                changes.append(f"{s.at:.2f} {s.phase} step={s.step} weight={s.weight}")
                previous = key
        return "rollout readings:\n" + "\n".join(changes[-30:]) + "\n" + self.daemon.log_tail(40)


@dataclass(frozen=True)
class WeightWindow:
    """A stretch of readings with the same weight, trimmed by a guard at both ends, and the
    load client's counts over it."""

    weight: int
    first: Seen
    last: Seen
    counts: Tally


def weight_windows(seen: list[Seen], guard: float) -> list[WeightWindow]:
    """Each maximal run of readings with one weight, minus ``guard`` seconds at both ends.

    The data plane may follow the store a pass later (or earlier): readings closer than
    ``guard`` to a change are not counted, so every counted request was routed under the
    run's weight. Runs shorter than two guards give no window.
    """
    runs: list[list[Seen]] = []
    for s in seen:
        if runs and runs[-1][0].weight == s.weight:
            runs[-1].append(s)
        else:
            runs.append([s])
    windows: list[WeightWindow] = []
    for run in runs:
        begin, end = run[0].at + guard, run[-1].at - guard
        inside = [s for s in run if begin <= s.at <= end and s.tally is not None]
        if len(inside) < 2:
            continue
        first, last = inside[0], inside[-1]
        assert first.tally is not None and last.tally is not None
        windows.append(WeightWindow(run[0].weight, first, last, last.tally - first.tally))
    return windows


# -- flows ------------------------------------------------------------------------------

NAME = "web"
MANIFEST = "web.yaml"


def deploy_first(
    world: World, plane: str, manifest: str, timeout: float = 30
) -> tuple[DaemonProc, str]:
    """Commit ``manifest`` (version 1), start the daemon on ``plane``, wait until Healthy."""
    sha = commit(world.repo, {MANIFEST: manifest}, "web: version 1")
    daemon = world.daemon(plane)
    replicas = int(manifest.split("  replicas: ", 1)[1].split("\n", 1)[0])
    wait_for(
        "version 1 converged",
        lambda: converged(daemon.service(NAME), sha, replicas),
        timeout,
        describe=daemon.log_tail,
    )
    return daemon, sha


def commit_next(world: World, manifest: str, version: str) -> str:
    return commit(world.repo, {MANIFEST: manifest}, f"web: version {version}")


def on_revision(daemon: DaemonProc, sha: str, replicas: int) -> Callable[[], bool]:
    """A check: ``sha`` is Healthy with exactly ``replicas`` ready replicas, none other."""
    return lambda: converged(daemon.service(NAME), sha, replicas)


def rolled_back_to(daemon: DaemonProc, good: str, replicas: int) -> Callable[[], bool]:
    """A check: the rollout is RolledBack and only ``good``'s replicas run, all ready."""

    def check() -> bool:
        svc = daemon.service(NAME)
        if svc is None or svc["rollout"]["phase"] != "RolledBack":
            return False
        instances = svc["instances"]
        return len(instances) == replicas and all(
            i["revision"] == good and i["ready"] for i in instances
        )

    return check


def action(daemon: DaemonProc, what: str) -> None:
    """``gitorch promote|abort web --server URL``; must be accepted (exit 0)."""
    done = gitorch(
        what, NAME, "--server", f"http://127.0.0.1:{daemon.port}", cwd=daemon.state.parent
    )
    assert done.code == 0, f"gitorch {what}: exit {done.code}\n{done.stdout}{done.stderr}"


def status(daemon: DaemonProc) -> dict[str, Any]:
    """``gitorch status web --format json --state DIR`` (with the analysis measurements)."""
    done = gitorch(
        "status", NAME, "--format", "json", "--state", str(daemon.state), cwd=daemon.state.parent
    )
    assert done.code == 0, done.stderr
    services = done.json()["services"]
    assert len(services) == 1, services
    return dict(services[0])


def history_entry(daemon: DaemonProc, sha: str) -> dict[str, Any]:
    """The daemon's history entry for revision ``sha``."""
    code, entries = daemon.request("GET", f"/api/v1/history?service={NAME}")
    assert code == 200, entries
    for entry in entries:
        if entry["revision"] == sha:
            return dict(entry)
    raise AssertionError(f"no history entry for {sha[:12]}: {entries}")
