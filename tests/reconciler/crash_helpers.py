"""A real ``gitorch daemon`` (subprocess, process driver) and what a test sees of its cluster.

The test never asks the daemon what it runs: it reads the ground truth itself, the way a
restarted daemon would (the process driver's records through a fresh
:class:`~gitorch.runtime.process.ProcessRuntime`, the state store read-only) plus what no
record can hide: every process on the machine that carries this test's token in its
environment (an orphan would have no record, but it would still carry the token).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_plane_helpers import stop_data_plane
from listen_ports import free_port

from gitorch.live.inventory import existing_cluster_name, local_node_name, runtime_dir
from gitorch.runtime.base import LABEL_REPLICA, LABEL_SPEC_DIGEST
from gitorch.runtime.process import ProcessRuntime
from gitorch.state import AuditEvent, RevisionRecord, StateStore

APP = Path(__file__).resolve().parents[2] / "examples" / "apps" / "api" / "app.py"
REPLICAS = 4

# One replica per slot, probed every second (the schema's minimum), rolled one at a time
# with no loss of capacity. The old version answers slowly so that a drain has requests
# in flight to wait for: the "during a drain" moments then last long enough to hit.
MANIFEST = """\
apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  command: ["{python}", "{app}"]
  env: {{VERSION: "{version}", SLOW_MS: "{slow_ms}", CRASH_TOKEN: "{token}"}}
  replicas: {replicas}
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: {lb_port}, targetPort: http, protocol: http}}
  readinessProbe:
    httpGet: {{path: /healthz, port: http}}
    periodSeconds: 1
    timeoutSeconds: 1
  terminationGracePeriodSeconds: 5
  strategy:
    type: RollingUpdate
    progressDeadlineSeconds: 60
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
"""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


@dataclass(frozen=True)
class Replica:
    """One replica as its process-driver record shows it."""

    id: str
    slot: str  # "api-2"
    digest: str  # template digest it runs
    state: str  # running | exited | ...
    port: int | None

    @property
    def pid(self) -> int:
        return int(self.id.split("-", 1)[0])


@dataclass(frozen=True)
class Census:
    """Replicas split by version, as counted at one instant."""

    replicas: tuple[Replica, ...]
    old_digest: str

    @property
    def old(self) -> list[Replica]:
        return [r for r in self.replicas if r.digest == self.old_digest]

    @property
    def new(self) -> list[Replica]:
        return [r for r in self.replicas if r.digest != self.old_digest]

    def describe(self) -> str:
        rows = ", ".join(
            f"{r.slot}:{'old' if r.digest == self.old_digest else 'new'}:{r.state}"
            for r in sorted(self.replicas, key=lambda r: (r.slot, r.digest))
        )
        return f"{len(self.new)} new, {len(self.old)} old [{rows}]"


class Cluster:
    """A Git repo of one Service, a state dir, and the daemon that reconciles one to the other."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"
        self.state = root / "state"
        self.token = f"crash-{os.getpid()}-{time.monotonic_ns()}"
        self.lb_port = free_port()
        self.api_port = free_port()
        self.log = root / "daemon.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_starts = 0
        self.repo.mkdir(parents=True)
        self._git("init", "-q", "-b", "main")
        self._git("config", "user.email", "crash@test.invalid")
        self._git("config", "user.name", "Crash Test")

    # ------------------------------------------------------------------ git

    def _git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.repo), *args], check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    def commit(self, version: str, slow_ms: int = 0, replicas: int = REPLICAS) -> str:
        """Commit the Service at ``version`` with ``replicas``; the new commit's sha."""
        text = MANIFEST.format(
            python=sys.executable,
            app=APP,
            version=version,
            slow_ms=slow_ms,
            token=self.token,
            replicas=replicas,
            lb_port=self.lb_port,
        )
        (self.repo / "api.yaml").write_text(text, encoding="utf-8")
        self._git("add", "api.yaml")
        self._git("commit", "-q", "-m", f"api: version {version}")
        return self._git("rev-parse", "HEAD")

    # ------------------------------------------------------------------ the daemon

    def start_daemon(self) -> None:
        assert self.daemon is None or self.daemon.poll() is not None
        self.daemon_starts += 1
        with open(self.log, "ab") as log:
            log.write(f"--- daemon start {self.daemon_starts}\n".encode())
            log.flush()
            self.daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gitorch",
                    "daemon",
                    "--repo",
                    str(self.repo),
                    "--state",
                    str(self.state),
                    "--runtime",
                    "process",
                    "--resync",
                    "0.3",
                    "--interval",
                    "1",
                    "--listen",
                    f"127.0.0.1:{self.api_port}",
                ],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill_daemon(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or released but by the kernel."""
        assert self.daemon is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no daemon log)"

    # ------------------------------------------------------------------ ground truth

    def replicas(self) -> list[Replica]:
        """Every replica record of this cluster, read by a fresh driver object."""
        cluster = existing_cluster_name(self.state)
        if cluster is None:
            return []
        node = local_node_name()
        runtime = ProcessRuntime(node, runtime_dir(self.state, node))
        return [
            Replica(
                id=i.id,
                slot=i.labels.get(LABEL_REPLICA, ""),
                digest=i.labels.get(LABEL_SPEC_DIGEST, ""),
                state=str(i.state),
                port=i.ports[0].host_port if i.ports else None,
            )
            for i in runtime.list_instances(cluster)
        ]

    def token_pids(self) -> set[int]:
        """Live processes (not zombies) whose environment carries this test's token."""
        needle = f"CRASH_TOKEN={self.token}".encode()
        found: set[int] = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as fh:
                    env = fh.read()
            except OSError:
                continue  # gone meanwhile
            if needle in env.split(b"\0"):
                found.add(int(entry.name))
        return found

    def revisions(self) -> list[RevisionRecord]:
        """Every recorded application, oldest first."""
        if not (self.state / "state.db").is_file():
            return []
        with StateStore(self.state, readonly=True) as store:
            return list(reversed(store.list_revisions(limit=None)))

    def events(self) -> list[AuditEvent]:
        with StateStore(self.state, readonly=True) as store:
            return store.list_events(limit=None, newest_first=False)

    def cleanup(self) -> None:
        """Kill the daemon, then every replica: by record, then by token (orphans too)."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.kill_daemon()
        stop_data_plane(self.state)  # it outlives the daemon by design
        cluster = existing_cluster_name(self.state)
        if cluster is not None:
            node = local_node_name()
            runtime = ProcessRuntime(node, runtime_dir(self.state, node))
            for instance in runtime.list_instances(cluster):
                with contextlib.suppress(Exception):
                    runtime.remove(instance.id)
        for pid in self.token_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def healthz(port: int | None, timeout: float = 0.2) -> bool:
    """True when a replica answers ``GET /healthz`` with 200."""
    if port is None:
        return False
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def get_page(port: int, timeout: float = 2.0) -> tuple[int, str]:
    """``GET /`` on ``port``: (status, body); (0, error) when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)
    finally:
        conn.close()


class Traffic:
    """Client threads keeping requests in flight through the balancer, so drains wait.

    Failures are expected here (the balancer dies with the daemon): only the count of
    answered requests is kept, to show that traffic flowed.
    """

    def __init__(self, ports: dict[int, int]) -> None:
        """``ports``: how many client threads per port."""
        self.answered = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(port,), daemon=True)
            for port, threads in ports.items()
            for _ in range(threads)
        ]

    def _run(self, port: int) -> None:
        while not self._stop.is_set():
            status, _ = get_page(port, timeout=3.0)
            if status == 200:
                with self._lock:
                    self.answered += 1
            else:
                self._stop.wait(0.02)  # nothing listening (daemon down): do not spin

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
