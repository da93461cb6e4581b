"""Rolling update benchmark: gitorch's daemon against the floor and against docker-compose.

    python3 bench/bench_rollout.py [--replicas 10] [--threads 8] [--rollouts 3] [--rounds 3]
    python3 bench/bench_rollout.py --start-cost 10

Needs a Docker engine, the example images (built with examples/images/build.sh when
missing) and, for the comparison, ``docker-compose`` (Debian's 1.29: ``apt-get install
docker-compose``; without it that part is skipped and said so). One run measures:

1. **floor**: the same ``--replicas`` containers of ``gitorch-example/api:2`` started with
   no orchestration: ``docker run -d -p`` for all of them at once (one thread each) and
   their health URL polled until every one answers (``bench_runtime``'s helpers); and
   issue 20's **batch floor**: the same batches (maxSurge = 2 containers each) started and
   probed back to back, a batch once the one before answers;
2. **gitorch**: ``gitorch daemon`` (subprocess, docker driver, watching a local repo) runs
   ``--replicas`` replicas of ``api:1`` behind its built-in balancer; a keep-alive client
   (``--threads`` threads) runs without pause; a commit moves the image to ``api:2``
   (RollingUpdate, maxSurge 2, maxUnavailable 0). Measured: failed requests, commit to
   converged (revision recorded as succeeded, every replica on ``:2``, none on ``:1``),
   and commit to the first new container started (Docker's ``State.StartedAt``).
   ``--rollouts`` rolling updates (``:1 -> :2 -> :1``...), each right after the batch
   floor measured again beside the same client load: the goal (<= 1.5x, 0 failed
   requests) is judged on the median of those pairs' ratios, both sides paying for the
   load alike; the ratio to the floor measured without the load is printed for reading,
   and so is the ratio to the **replace floor** measured in each pair too: the same
   batches started by a script, and after each as many old containers removed
   (:func:`replace_floor`): the engine work of a rolling update without orchestration;
3. **docker-compose**: the same service scaled to ``--replicas`` with a published port
   range, ``docker-compose up -d`` with the new image, and the same client hitting the
   published ports round-robin. Measured: failed requests, time from ``up`` to every port
   answering version 2;
4. **trigger latency**, ``--rounds`` times each, on a 2-replica service: commit to the
   first new replica started with the daemon watching a local checkout (watchdog), and
   webhook POST to the first new replica started with the daemon tracking a bare
   ``file://`` remote (poll interval 300 s, so only the webhook can explain it).

``--start-cost ROUNDS`` measures only what one wave's engine work is made of: ``docker
start`` of containers of ``api:1`` with their port published (as the docker driver makes
them), on the bridge without a published port, with no network, and one alone, each
split by the engine's events (network ``connect``, ``start``), and their removal; on the
idle engine, then beside the rollout's client load (see :func:`bench_start_cost`).

``--engine-cpu`` (root) also accounts the engine's CPU seconds (``dockerd``, ``containerd``
and the shims, ``runc`` and ``docker-proxy`` they fork: :mod:`engine_cpu`) in each pair's
windows: the batch floor's starts, its containers' removal after its clock, and the
rollout, with how busy the whole machine was: whether the rollout does more engine work
than starting its containers and removing the old ones, and whether the machine had CPU
to spare for it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_runtime  # noqa: E402  (bench/ is not a package; also puts the repo on sys.path)
from bench_runtime import (  # noqa: E402
    CONTAINER_PORT,
    free_port,
    http_ok,
    poll_until,
    post_push_event,
)
from engine_cpu import EngineCpu, machine_busy  # noqa: E402
from verdicts import emit  # noqa: E402

from gitorch.errors import StateError  # noqa: E402
from gitorch.state import RevisionResult, StateStore  # noqa: E402

REPO = bench_runtime.REPO
IMAGE = "gitorch-example/api"
HEALTH = "/cgi-bin/healthz"
CONVERGE_TIMEOUT = 300.0
LATENCY_GOAL = 1.0
SURGE = 2  # the manifest's maxSurge: the batch floor starts batches of this many
#: The daemons' --log-level (``--log-level debug``: each pass's steps timed in daemon.log).
DAEMON_LOG_LEVEL = "info"

MANIFEST = """\
apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  image: {image}
  replicas: {replicas}
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: {lb_port}, targetPort: http, protocol: http}}
  readinessProbe:
    httpGet: {{path: {health}, port: http}}
    periodSeconds: 1
    timeoutSeconds: 1
  terminationGracePeriodSeconds: 10
  strategy:
    type: RollingUpdate
    progressDeadlineSeconds: 240
    rollingUpdate: {{maxSurge: {surge}, maxUnavailable: 0}}
"""

COMPOSE = """\
version: "2.4"
services:
  api:
    image: {image}
    ports: ["127.0.0.1:{first}-{last}:8080"]
"""


# -- the client -------------------------------------------------------------------------


@dataclass
class Load:
    """Threads sending GET / over keep-alive connections, round-robin over ``ports``;
    every error or non-200 answer is a failed request. Without pause, or paced to ``rate``
    requests a second in all (a load that leaves the CPU to the engine)."""

    ports: list[int]
    threads: int
    rate: float | None = None
    ok: int = 0
    failed: int = 0
    samples: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]

    def _run(self, offset: int) -> None:
        conns: dict[int, http.client.HTTPConnection] = {}
        n = offset
        interval = self.threads / self.rate if self.rate else 0.0
        due = time.monotonic() + interval * offset / self.threads
        while not self._stop.is_set():
            if interval:
                # Paced on a schedule, not after each answer: a slow answer is caught up.
                due += interval
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    break
            port = self.ports[n % len(self.ports)]
            n += 1
            conn = conns.get(port) or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conns[port] = conn
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                response.read()
                good = response.status == 200
                detail = f"HTTP {response.status}"
                version = response.getheader("X-App-Version", "?")
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                good, detail, version = False, f"{type(exc).__name__}: {exc}", ""
                conn.close()
                conns.pop(port, None)
            with self._lock:
                if good:
                    self.ok += 1
                    self.versions[version] = self.versions.get(version, 0) + 1
                else:
                    self.failed += 1
                    if len(self.samples) < 5:
                        self.samples.append(f"port {port}: {detail}")
        for conn in conns.values():
            conn.close()

    def __enter__(self) -> Load:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)


# -- docker helpers (the bench may use the SDK: it is not part of gitorch) ----------------


def docker_client() -> Any:
    import docker

    return docker.from_env(timeout=60)


def started_at(container: Any) -> float:
    """Docker's State.StartedAt as a Unix time (nanoseconds trimmed to microseconds)."""
    return _docker_time(container.attrs["State"]["StartedAt"])


def created_at(container: Any) -> float:
    """Docker's Created (when the engine took the create call) as a Unix time."""
    return _docker_time(container.attrs["Created"])


def _docker_time(text: str) -> float:
    head, _, frac = text.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(head + "+00:00").timestamp()
    return stamp + (float("0." + frac[:6]) if frac else 0.0)


def ensure_images() -> None:
    client = docker_client()
    missing = []
    for tag in ("1", "2"):
        try:
            client.images.get(f"{IMAGE}:{tag}")
        except Exception:
            missing.append(tag)
    if missing:
        print(f"building the example images (missing {IMAGE}:{','.join(missing)})")
        subprocess.run(["bash", str(REPO / "examples/images/build.sh")], check=True)


# -- 1. the floor -----------------------------------------------------------------------


def floor(replicas: int) -> float:
    """Seconds to start ``replicas`` containers of :2 at once and see all of them ready."""
    took, ids = _start_batch(replicas)
    remove_containers(ids)
    if len(ids) != replicas:
        raise SystemExit("bench: the floor could not start every container")
    return took


def batch_floor(
    replicas: int, surge: int, clock_stopped: Callable[[], None] | None = None
) -> float:
    """Issue 20's floor of a rolling update: the same batches (``surge`` containers of :2
    each) started and probed back to back with no orchestration: a batch starts once
    every container of the one before answers its health URL. ``clock_stopped`` is
    called when the last batch answers, before the containers are removed."""
    ids: list[str] = []
    took = 0.0
    try:
        for first in range(0, replicas, surge):
            seconds, batch = _start_batch(min(surge, replicas - first))
            took += seconds
            ids += batch
    finally:
        if clock_stopped is not None:
            clock_stopped()
        remove_containers(ids)
    if len(ids) != replicas:
        raise SystemExit("bench: the batch floor could not start every container")
    return took


def replace_floor(replicas: int, surge: int) -> float:
    """The engine work of a rolling update done by a script with no orchestration:
    ``replicas`` containers of :1 started first (not timed), then the batch floor's
    batches of :2, a batch once the one before answers, and once each batch answers as
    many :1 containers removed (``docker rm -f``) beside the next batch's start. Seconds
    from the first batch to the last removal: what a rolling update asks of the engine,
    less its drain, its signal and every decision."""
    _, old = _start_batch(replicas, tag="1")
    time.sleep(1.0)  # their start's clean-up out of the clock
    new: list[str] = []
    removals: list[threading.Thread] = []
    try:
        started = time.perf_counter()
        for first in range(0, replicas, surge):
            _, batch = _start_batch(min(surge, replicas - first))
            new += batch
            leaving, old = old[: len(batch)], old[len(batch) :]
            removal = threading.Thread(target=remove_containers, args=(leaving,))
            removal.start()
            removals.append(removal)
        for removal in removals:
            removal.join()
        took = time.perf_counter() - started
    finally:
        for removal in removals:
            removal.join()
        remove_containers(old + new)
    if len(new) != replicas:
        raise SystemExit("bench: the replace floor could not start every container")
    return took


def remove_containers(ids: list[str]) -> None:
    """``docker rm -f`` of ``ids`` at once (none: nothing)."""
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False, timeout=120)


def _start_batch(count: int, tag: str = "2") -> tuple[float, list[str]]:
    """Start ``count`` containers of ``tag`` at once (a thread each); seconds until every
    one answers its health URL, and their ids."""
    ids: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        port = free_port()
        run = subprocess.run(
            ["docker", "run", "-d", "-p", f"127.0.0.1:{port}:{CONTAINER_PORT}", f"{IMAGE}:{tag}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        with lock:
            ids.append(run.stdout.strip())
        poll_until(lambda: http_ok(f"http://127.0.0.1:{port}{HEALTH}"), "floor container")

    started = time.perf_counter()
    workers = [threading.Thread(target=one) for _ in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - started, ids


# -- 2. and 4. gitorch ------------------------------------------------------------------


class Gitorch:
    """A work tree, optionally a bare remote it pushes to, a state dir and a daemon."""

    def __init__(self, root: Path, replicas: int, *, remote: bool) -> None:
        self.root = root
        self.replicas = replicas
        self.work = root / "work"
        self.state = root / "state"
        self.lb_port = free_port()
        self.api_port = free_port()
        self.secret = root / "webhook-secret"
        self.work.mkdir(parents=True)
        self.secret.write_text(secrets.token_hex(16) + "\n")
        self.bare = root / "remote.git" if remote else None
        self.daemon: subprocess.Popen[bytes] | None = None
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "bench@gitorch.invalid")
        self.git("config", "user.name", "bench")
        if self.bare is not None:
            subprocess.run(
                ["git", "init", "-q", "--bare", "-b", "main", str(self.bare)], check=True
            )
            self.git("remote", "add", "origin", str(self.bare))

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.work), *args], check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    def commit(self, tag: str) -> tuple[str, float]:
        """Commit (and push, with a remote) the image ``:tag``; (sha, wall time it landed)."""
        (self.work / "api.yaml").write_text(
            MANIFEST.format(
                image=f"{IMAGE}:{tag}",
                replicas=self.replicas,
                lb_port=self.lb_port,
                health=HEALTH,
                surge=SURGE,
            )
        )
        self.git("add", "api.yaml")
        self.git("commit", "-q", "-m", f"api {tag}")
        if self.bare is not None:
            self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD"), time.time()

    def start(self) -> None:
        repo = f"file://{self.bare}" if self.bare is not None else str(self.work)
        argv = [sys.executable, "-m", "gitorch", "daemon", "--repo", repo]
        argv += ["--state", str(self.state), "--runtime", "docker", "--resync", "1"]
        argv += ["--listen", f"127.0.0.1:{self.api_port}", "--log-level", DAEMON_LOG_LEVEL]
        if self.bare is not None:
            argv += ["--interval", "300", "--webhook-secret-file", str(self.secret)]
        else:
            argv += ["--interval", "30"]
        log = open(self.root / "daemon.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.daemon = subprocess.Popen(argv, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)

    def webhook(self, sha: str) -> float:
        """POST a signed GitHub push event; the wall time it was sent."""
        return post_push_event(
            self.api_port, self.secret.read_text().rstrip("\n"), sha, clock=time.time
        )

    def cluster(self) -> str | None:
        try:
            return (self.state / "cluster").read_text().strip() or None
        except OSError:
            return None

    def containers(self) -> list[Any]:
        cluster = self.cluster()
        if cluster is None:
            return []
        import docker.errors

        for _ in range(20):
            try:
                return docker_client().containers.list(
                    all=True, filters={"label": f"dev.gitorch.cluster={cluster}"}
                )
            except docker.errors.NotFound:  # removed between the listing and its inspect
                time.sleep(0.01)
        raise SystemExit("bench: cannot list the cluster's containers")

    def converged(self, sha: str, tag: str) -> bool:
        if not (self.state / "state.db").is_file():
            return False
        try:
            with StateStore(self.state, readonly=True) as store:
                done = any(
                    r.sha == sha and r.result is RevisionResult.SUCCEEDED
                    for r in store.list_revisions(limit=5)
                )
        except StateError:  # the daemon is still creating (migrating) its store
            return False
        if not done:
            return False
        images = [c.attrs["Config"]["Image"] for c in self.containers()]
        return len(images) == self.replicas and set(images) == {f"{IMAGE}:{tag}"}

    def wait_converged(self, sha: str, tag: str) -> float:
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while not self.converged(sha, tag):
            if self.daemon is not None and self.daemon.poll() is not None:
                raise SystemExit(f"bench: the daemon died; see {self.root / 'daemon.log'}")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: no convergence to {tag}; see {self.root / 'daemon.log'}")
            time.sleep(0.05)
        return time.time()

    def first_new(self, known: set[str], since: float) -> tuple[float, float]:
        """Seconds from ``since`` to the first container not in ``known`` created (the
        engine's ``Created``: the daemon's part) and started (``State.StartedAt``)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            fresh = [c for c in self.containers() if c.id not in known]
            starts = [
                (started_at(c), created_at(c))
                for c in fresh
                if c.attrs["State"].get("StartedAt", "")[:4] > "0001"
            ]
            if starts:
                start, _ = min(starts)
                created = min(c for _, c in starts)
                return created - since, start - since
            time.sleep(0.01)
        raise SystemExit("bench: no new replica within 60 s")

    def stop(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        for container in self.containers():
            with contextlib.suppress(Exception):
                container.remove(force=True)
        # The proxy outlives the daemon by design: the benchmark leaves none behind.
        sys.path.insert(0, str(REPO / "tests" / "shared"))
        from data_plane_helpers import stop_data_plane

        stop_data_plane(self.state)


@contextlib.contextmanager
def gitorch(root: Path, replicas: int, *, remote: bool) -> Iterator[Gitorch]:
    run = Gitorch(root, replicas, remote=remote)
    try:
        yield run
    finally:
        run.stop()


@dataclass
class Rollout:
    seconds: float
    ok: int
    failed: int
    samples: list[str]
    first_new: float | None = None
    #: The batch floor measured while the same client load runs against the old
    #: replicas (None: not measured): what the engine's starts cost beside that load.
    loaded_floor: float | None = None
    #: Commit to the first new container created (the engine's ``Created``): the
    #: daemon's share of ``first_new``, the rest is the engine's create and start.
    first_created: float | None = None
    #: ``--engine-cpu``: the engine's CPU seconds in each window (None: not measured).
    engine: EngineWork | None = None
    #: :func:`replace_floor` beside the same load, just before (None: not measured).
    replace_floor: float | None = None


@dataclass(frozen=True)
class EngineWork:
    """The engine's CPU seconds (dockerd, containerd and what they fork) over one pair,
    and how busy the whole machine was (share of both cores) in the same windows."""

    floor: float  # the batch floor's starts
    floor_removal: float  # its containers' removal (``docker rm -f``), after its clock
    rollout: float  # commit -> converged
    floor_busy: float
    rollout_busy: float

    def __str__(self) -> str:
        return (
            f"engine CPU: floor {self.floor:.2f} s (machine {self.floor_busy:.0%} busy), its "
            f"removal {self.floor_removal:.2f} s, rollout {self.rollout:.2f} s (machine "
            f"{self.rollout_busy:.0%} busy): rollout / floor {self.rollout / self.floor:.2f}x, "
            f"rollout / (floor + removal) {self.rollout / (self.floor + self.floor_removal):.2f}x"
        )


class _Meter:
    """The engine's CPU seconds and the machine's busy share between marks."""

    def __init__(self, engine: EngineCpu) -> None:
        self.engine = engine
        self.splits: dict[str, tuple[float, float]] = {}
        self.cpu = engine.seconds()
        self.busy, self.total = machine_busy()

    def mark(self, name: str) -> None:
        """Close the window since the last mark as ``name``; the next opens here."""
        cpu = self.engine.seconds()
        busy, total = machine_busy()
        share = (busy - self.busy) / max(1e-9, total - self.total)
        self.splits[name] = (cpu - self.cpu, share)
        self.cpu, self.busy, self.total = cpu, busy, total

    def work(self) -> EngineWork:
        (floor, floor_busy), (removal, _), (rollout, rollout_busy) = (
            self.splits["floor"],
            self.splits["removal"],
            self.splits["rollout"],
        )
        return EngineWork(floor, removal, rollout, floor_busy, rollout_busy)


def bench_gitorch(
    root: Path,
    replicas: int,
    threads: int,
    rollouts: int = 1,
    engine: EngineCpu | None = None,
    rate: float | None = None,
) -> list[Rollout]:
    """``rollouts`` rolling updates of one daemon's service (``:1`` -> ``:2`` -> ``:1``...)
    under the client load, each right after the batch floor measured beside the same
    load: pairs in the same conditions, whatever the machine does between them.
    ``engine``: also account the engine's CPU in each window; ``rate``: the load's pace."""
    done: list[Rollout] = []
    with gitorch(root, replicas, remote=False) as run:
        sha, _ = run.commit("1")
        run.start()
        run.wait_converged(sha, "1")
        poll_until(lambda: http_ok(f"http://127.0.0.1:{run.lb_port}/"), "the balancer")
        with Load([run.lb_port], threads, rate) as load:
            time.sleep(2.0)  # steady traffic before the commit
            for number in range(rollouts):
                tag = "2" if number % 2 == 0 else "1"
                known = {c.id for c in run.containers()}
                ok, failed, seen = load.ok, load.failed, len(load.samples)
                # The batch floor again, beside the client load the rollout meets.
                meter = _Meter(engine) if engine is not None else None
                loaded_floor = batch_floor(
                    replicas, SURGE, clock_stopped=partial(meter.mark, "floor") if meter else None
                )
                time.sleep(1.0)  # the engine's clean-up of the floor's containers
                if meter is not None:
                    meter.mark("removal")
                # And the same engine work done by a script, beside the same load.
                replaced = replace_floor(replicas, SURGE)
                time.sleep(1.0)
                if meter is not None:
                    meter.mark("replace floor")
                sha, committed = run.commit(tag)
                created, first = run.first_new(known, committed)
                converged = run.wait_converged(sha, tag)
                work = None
                if meter is not None:
                    meter.mark("rollout")
                    work = meter.work()
                time.sleep(1.0)  # and after: late failures count too
                done.append(
                    Rollout(
                        converged - committed,
                        load.ok - ok,
                        load.failed - failed,
                        load.samples[seen:],
                        first,
                        loaded_floor,
                        created,
                        work,
                        replaced,
                    )
                )
    return done


def _median_rollout(rounds: list[Rollout]) -> Rollout:
    """The rounds as one row: median times, requests and failures summed, the first
    round's commit latencies (its commit met the steadiest load)."""
    floors = [r.loaded_floor for r in rounds if r.loaded_floor is not None]
    return Rollout(
        statistics.median(r.seconds for r in rounds),
        sum(r.ok for r in rounds),
        sum(r.failed for r in rounds),
        [sample for r in rounds for sample in r.samples][:5],
        rounds[0].first_new,
        statistics.median(floors) if floors else None,
        rounds[0].first_created,
    )


def trigger_latency(root: Path, remote: bool, rounds: int) -> list[tuple[float, float]]:
    """Commit (local) or webhook POST (remote) to the first new replica created, and
    started."""
    latencies = []
    with gitorch(root, 2, remote=remote) as run:
        sha, _ = run.commit("1")
        run.start()
        if remote:  # the daemon fetched :1 at start; wait until its API listens
            poll_until(lambda: http_ok(f"http://127.0.0.1:{run.api_port}/healthz"), "daemon API")
        run.wait_converged(sha, "1")
        tag = "1"
        for _ in range(rounds):
            tag = "2" if tag == "1" else "1"
            known = {c.id for c in run.containers()}
            time.sleep(0.5)  # the daemon idles between passes, as it would in real life
            sha, since = run.commit(tag)
            if remote:
                since = run.webhook(sha)
            latencies.append(run.first_new(known, since))
            run.wait_converged(sha, tag)
    return latencies


# -- 3. docker-compose --------------------------------------------------------------------


def compose_available() -> bool:
    try:
        subprocess.run(["docker-compose", "version"], capture_output=True, check=True, timeout=30)
        return True
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return False


def version_on(port: int) -> str | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.getheader("X-App-Version") if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def bench_compose(root: Path, replicas: int, threads: int, rate: float | None = None) -> Rollout:
    project = f"gitorchbench{secrets.token_hex(3)}"
    first = 20000 + secrets.randbelow(20000)
    ports = list(range(first, first + replicas))
    folder = root / "compose"
    folder.mkdir()
    compose_file = folder / "docker-compose.yml"

    def up(tag: str) -> None:
        compose_file.write_text(
            COMPOSE.format(image=f"{IMAGE}:{tag}", first=ports[0], last=ports[-1])
        )
        subprocess.run(
            ["docker-compose", "-p", project, "up", "-d", "--scale", f"api={replicas}"],
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=600,
        )

    def all_on(tag: str) -> bool:
        return all(version_on(p) == tag for p in ports)

    try:
        up("1")
        poll_until(lambda: all_on("1"), "compose :1")
        with Load(ports, threads, rate) as load:
            time.sleep(2.0)
            started = time.time()
            up("2")
            deadline = time.monotonic() + CONVERGE_TIMEOUT
            while not all_on("2"):
                if time.monotonic() > deadline:
                    raise SystemExit("bench: compose never served :2 on every port")
                time.sleep(0.01)
            done = time.time()
            time.sleep(1.0)
        return Rollout(done - started, load.ok, load.failed, load.samples)
    finally:
        subprocess.run(
            ["docker-compose", "-p", project, "down", "-t", "2"],
            cwd=folder,
            capture_output=True,
            check=False,
            timeout=300,
        )


# -- 5. what one container start costs the engine ------------------------------------------

#: How ``--start-cost`` makes its containers: as the docker driver does (the container's
#: port published on a host port of 127.0.0.1, docker-init as PID 1), then without the
#: published port, then with no network at all; (label, containers started at once).
START_MODES: dict[str, tuple[str, int]] = {
    "published": ("2 containers, port published on 127.0.0.1 (as the docker driver)", 2),
    "bridge": ("2 containers on the bridge, no published port", 2),
    "none": ("2 containers, --network none", 2),
    "one": ("1 container, port published", 1),
}


@dataclass
class StartCost:
    """Seconds per round of one way of starting containers (``START_MODES``)."""

    start: list[float] = field(default_factory=list)  # start calls issued -> all returned
    network: list[float] = field(default_factory=list)  # calls -> last ``network connect``
    runtime: list[float] = field(default_factory=list)  # last connect -> last ``start`` event
    remove: list[float] = field(default_factory=list)  # ``rm -f`` of all of them, at once


def _at_once(calls: list[Any]) -> float:
    began = time.perf_counter()
    workers = [threading.Thread(target=call) for call in calls]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - began


def start_cost(rounds: int) -> dict[str, StartCost]:
    """``docker start`` of containers of ``api:1`` made each way of :data:`START_MODES`,
    ``rounds`` times each (the ways interleaved, the order reversed every other round),
    with the engine's own events splitting a start in two: the call to the last network
    ``connect`` (the sandbox, its veth and, when published, the port's NAT rules and
    docker-proxy) and from there to the container's ``start`` event (containerd, runc,
    docker-init)."""
    import docker

    api = docker.APIClient(version="auto", timeout=120)
    costs = {mode: StartCost() for mode in START_MODES}
    try:
        for number in range(rounds):
            order = list(START_MODES) if number % 2 == 0 else list(reversed(START_MODES))
            for mode in order:
                _start_round(api, mode, costs[mode])
    finally:
        api.close()
    return costs


def _start_round(api: Any, mode: str, cost: StartCost) -> None:
    count = START_MODES[mode][1]
    publish = mode in ("published", "one")
    host_config = api.create_host_config(
        port_bindings={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)} if publish else None,
        network_mode="none" if mode == "none" else None,
        init=True,
        restart_policy={"Name": "no"},
    )
    ids = [
        str(
            api.create_container(
                f"{IMAGE}:1",
                ports=None if mode == "none" else [(CONTAINER_PORT, "tcp")],
                host_config=host_config,
                labels={"dev.gitorch.bench": "start-cost"},
                detach=True,
            )["Id"]
        )
        for _ in range(count)
    ]
    try:
        since = time.time()
        cost.start.append(_at_once([lambda c=c: api.start(c) for c in ids]))
        until = time.time() + 0.2
        connects: list[float] = []
        starts: list[float] = []
        for event in api.events(since=since - 0.01, until=until, decode=True):
            when = event["timeNano"] / 1e9
            actor = event.get("Actor") or {}
            if event.get("Type") == "network" and event.get("Action") == "connect":
                if (actor.get("Attributes") or {}).get("container") in ids:
                    connects.append(when)
            elif event.get("Action") == "start" and actor.get("ID") in ids:
                starts.append(when)
        if connects and starts:
            cost.network.append(max(connects) - since)
            cost.runtime.append(max(starts) - max(connects))
        time.sleep(0.3)  # the containers' own start-up, off the clock
    finally:
        cost.remove.append(_at_once([lambda c=c: api.remove_container(c, force=True) for c in ids]))
        time.sleep(0.2)


def docker_proxy_cpu() -> tuple[float, int]:
    """CPU seconds used so far by the engine's ``docker-proxy`` processes, and how many."""
    seconds, count = 0.0, 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "docker-proxy":
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        count += 1
    return seconds, count


def print_start_cost(title: str, costs: dict[str, StartCost]) -> None:
    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"

    print(title)
    print("| containers | start | call -> network connect | connect -> start event | rm -f |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode, (label, _) in START_MODES.items():
        c = costs[mode]
        print(
            f"| {label} | {cell(c.start)} | {cell(c.network)} | {cell(c.runtime)} | "
            f"{cell(c.remove)} |"
        )
    published = statistics.median(costs["published"].start)
    bridge = statistics.median(costs["bridge"].start)
    print(
        f"publishing the port: {published - bridge:+.3f} s of a {published:.3f} s start "
        f"({(published - bridge) / published:+.0%}, medians)"
    )
    print()


def bench_start_cost(root: Path, rounds: int, replicas: int, threads: int) -> None:
    """``--start-cost``: :func:`start_cost` on the idle engine, then beside the rolling
    update's client load (a gitorch service of ``replicas`` replicas of ``api:1``,
    ``threads`` keep-alive client threads through its balancer)."""
    before = os.getloadavg()[0]
    idle = start_cost(rounds)
    print_start_cost(
        f"docker start, {rounds} rounds each, no client load "
        f"(load average {before:.1f} -> {os.getloadavg()[0]:.1f}); seconds, median [range]",
        idle,
    )
    with gitorch(root, replicas, remote=False) as run:
        sha, _ = run.commit("1")
        run.start()
        run.wait_converged(sha, "1")
        poll_until(lambda: http_ok(f"http://127.0.0.1:{run.lb_port}/"), "the balancer")
        with Load([run.lb_port], threads) as load:
            time.sleep(2.0)
            cpu_before, proxies = docker_proxy_cpu()
            served, began = load.ok, time.monotonic()
            time.sleep(10.0)
            cpu, _ = docker_proxy_cpu()
            elapsed = time.monotonic() - began
            print(
                f"client load alone: {load.ok - served} requests in {elapsed:.1f} s through the "
                f"balancer; the {proxies} docker-proxy processes of the replicas' published "
                f"ports used {cpu - cpu_before:.2f} s of CPU "
                f"({(cpu - cpu_before) / elapsed:.0%} of a core)"
            )
            before = os.getloadavg()[0]
            busy = start_cost(rounds)
            print_start_cost(
                f"docker start, {rounds} rounds each, beside {threads} client threads through "
                f"the balancer to {replicas} replicas (load average {before:.1f} -> "
                f"{os.getloadavg()[0]:.1f}, {load.failed} failed of {load.ok + load.failed})",
                busy,
            )


# -- report -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8, help="client threads")
    parser.add_argument(
        "--rate",
        type=float,
        help="pace the client threads to this many requests a second in all (default: "
        "without pause, which saturates two cores)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per trigger latency")
    parser.add_argument(
        "--rollouts",
        type=int,
        default=3,
        help="rolling updates, each paired with the batch floor beside the same load",
    )
    parser.add_argument(
        "--engine-cpu",
        action="store_true",
        help="also account the engine's CPU (dockerd, containerd and what they fork) in "
        "each floor and rollout (root: moves them into a cgroup for the run)",
    )
    parser.add_argument("--no-compose", action="store_true", help="skip docker-compose")
    parser.add_argument("--only-gitorch", action="store_true", help="the gitorch rollout alone")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (daemon logs)")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info"),
        help="the daemons' log level (debug: each pass's steps timed, with --keep)",
    )
    parser.add_argument(
        "--start-cost",
        type=int,
        metavar="ROUNDS",
        help="only measure what a container start costs the engine, published or not",
    )
    args = parser.parse_args(argv)
    global DAEMON_LOG_LEVEL
    DAEMON_LOG_LEVEL = args.log_level
    if not bench_runtime.docker_answers():
        raise SystemExit("bench: needs a Docker engine at unix:///var/run/docker.sock")
    ensure_images()
    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.keep))
        else:
            scratch = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="gitorch-bench-"))
            )
        engine = stack.enter_context(EngineCpu()) if args.engine_cpu else None
        if args.start_cost:
            bench_start_cost(scratch / "gitorch", args.start_cost, args.replicas, args.threads)
            return 0
        if args.only_gitorch:
            for one in bench_gitorch(
                scratch / "gitorch", args.replicas, args.threads, args.rollouts, engine, args.rate
            ):
                print(f"gitorch: {one}")
                if one.engine is not None:
                    print(f"  {one.engine}")
            return 0
        floor_s = floor(args.replicas)
        print(f"floor: {args.replicas} x docker run -d + poll, all at once: {floor_s:.2f} s")
        batches_s = batch_floor(args.replicas, SURGE)
        print(f"batch floor: batches of {SURGE} started and probed back to back: {batches_s:.2f} s")
        rounds = bench_gitorch(
            scratch / "gitorch", args.replicas, args.threads, args.rollouts, engine, args.rate
        )
        for number, one in enumerate(rounds, 1):
            print(
                f"gitorch rollout {number}: converged in {one.seconds:.2f} s, {one.failed} failed "
                f"of {one.ok + one.failed} requests {one.samples}; batch floor beside the "
                f"load just before: {one.loaded_floor:.2f} s, the replace floor "
                f"{one.replace_floor:.2f} s"
            )
            if one.engine is not None:
                print(f"  {one.engine}")
        ours = _median_rollout(rounds)
        theirs: Rollout | None = None
        if args.no_compose:
            print("docker-compose: skipped (--no-compose)")
        elif not compose_available():
            print("docker-compose: skipped (not installed: apt-get install docker-compose)")
        else:
            theirs = bench_compose(scratch, args.replicas, args.threads, args.rate)
            print(
                f"docker-compose: all ports on :2 after {theirs.seconds:.2f} s, {theirs.failed} "
                f"failed of {theirs.ok + theirs.failed} requests {theirs.samples}"
            )
        watch = trigger_latency(scratch / "watch", remote=False, rounds=args.rounds)
        hook = trigger_latency(scratch / "hook", remote=True, rounds=args.rounds)
    load_after = os.getloadavg()[0]

    print()
    paced = f" paced to {args.rate:g} requests/s" if args.rate else ""
    print(
        f"rolling update of {args.replicas} replicas, {IMAGE}:1 -> :2, {args.threads} keep-alive "
        f"client threads{paced} (load average {load_before:.1f} -> {load_after:.1f})"
    )
    print(f"| {'':<34} | failed requests | requests | time (s) | time / floor |")
    print(f"| {'-' * 34} | ---: | ---: | ---: | ---: |")
    print(f"| {'floor (docker run -d + poll)':<34} | - | - | {floor_s:.2f} | 1.00x |")
    print(
        f"| {'batch floor (batches of ' + str(SURGE) + ', back to back)':<34} | - | - | "
        f"{batches_s:.2f} | {batches_s / floor_s:.2f}x |"
    )
    loaded = ours.loaded_floor
    assert loaded is not None
    print(
        f"| {'batch floor beside the client load':<34} | - | - | "
        f"{loaded:.2f} | {loaded / floor_s:.2f}x |"
    )
    rows = [("gitorch (maxSurge 2, maxUnavailable 0)", ours)]
    if theirs is not None:
        rows.append(("docker-compose up -d (recreate)", theirs))
    for label, r in rows:
        print(
            f"| {label:<34} | {r.failed} | {r.ok + r.failed} | {r.seconds:.2f} | "
            f"{r.seconds / floor_s:.2f}x |"
        )
    print("(gitorch and the floor beside the load: medians of the rounds below)")
    print()
    print(
        "| round | batch floor beside the load | rolling update | / that floor | failed "
        "| replace floor beside the load | rolling update / replace floor |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    paired, replaced = [], []
    for number, one in enumerate(rounds, 1):
        assert one.loaded_floor is not None and one.replace_floor is not None
        paired.append(one.seconds / one.loaded_floor)
        replaced.append(one.seconds / one.replace_floor)
        print(
            f"| {number} | {one.loaded_floor:.2f} s | {one.seconds:.2f} s | "
            f"{paired[-1]:.2f}x | {one.failed} of {one.ok + one.failed} "
            f"| {one.replace_floor:.2f} s | {replaced[-1]:.2f}x |"
        )
    ratio = statistics.median(paired)
    met = ratio <= 1.5 and ours.failed == 0
    print(
        f"rolling update / batch floor beside the same client load, median of {len(rounds)} "
        f"rounds: {ratio:.2f}x, {ours.failed} failed (goal <= 1.5x, 0 failed): "
        f"{'met' if met else 'NOT met'}"
    )
    emit(
        f"rolling update of {args.replicas} replicas (maxSurge {SURGE}), {ours.failed} failed",
        f"{ours.seconds:.2f} s",
        against=f"batch floor beside the same client load ({loaded:.2f} s)",
        ratio=f"{ratio:.2f}x",
        goal="<= 1.5x the floor, 0 failed",
        met=met,
    )
    replace_ratio = statistics.median(replaced)
    replace_s = statistics.median(r.replace_floor for r in rounds if r.replace_floor is not None)
    print(
        f"rolling update / replace floor beside the same client load, median of {len(rounds)} "
        f"rounds: {replace_ratio:.2f}x (for reading: the same starts and as many removals "
        "done by a script, what orchestration adds to the engine's work)"
    )
    emit(
        f"rolling update of {args.replicas} replicas (maxSurge {SURGE})",
        f"{ours.seconds:.2f} s",
        against=f"replace floor beside the same client load ({replace_s:.2f} s)",
        ratio=f"{replace_ratio:.2f}x",
    )
    quiet = ours.seconds / batches_s
    print(
        f"rolling update / batch floor without the client load: {quiet:.2f}x (for reading: "
        "the floor pays nothing for the load the rollout serves beside it)"
    )
    emit(
        f"rolling update of {args.replicas} replicas (maxSurge {SURGE})",
        f"{ours.seconds:.2f} s",
        against=f"batch floor without the client load ({batches_s:.2f} s)",
        ratio=f"{quiet:.2f}x",
    )
    if theirs is not None and ours.seconds:
        print(f"compose time / gitorch time: {theirs.seconds / ours.seconds:.2f}x")
    assert ours.first_new is not None and ours.first_created is not None
    print()
    print(
        f"| trigger -> first new replica started | median | samples | goal < {LATENCY_GOAL:g} s "
        "| created (the daemon's part): median, samples |"
    )
    print("| --- | ---: | --- | --- | ---: |")
    for label, pairs in (
        ("commit, local repo (watchdog), 10 replicas", [(ours.first_created, ours.first_new)]),
        ("commit, local repo (watchdog), 2 replicas", watch),
        ("webhook POST, bare file:// remote", hook),
    ):
        values = [started for _, started in pairs]
        created = [c for c, _ in pairs]
        median = statistics.median(values)
        verdict = "ok" if median < LATENCY_GOAL else "OVER"
        shown = ", ".join(f"{v:.3f}" for v in values)
        made = ", ".join(f"{v:.3f}" for v in created)
        print(
            f"| {label} | {median:.3f} s | {shown} | {verdict} "
            f"| {statistics.median(created):.3f} s: {made} |"
        )
        emit(
            f"trigger -> first new replica started: {label}",
            f"{median:.3f} s",
            goal=f"< {LATENCY_GOAL:g} s",
            met=median < LATENCY_GOAL,
        )
    print()
    verdict = "OK" if ours.failed == 0 else "FAILED REQUESTS"
    print(f"gitorch failed requests: {ours.failed} (goal 0): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
