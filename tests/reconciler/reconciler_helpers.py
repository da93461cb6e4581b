"""Helpers for the reconciler integration tests: Git repos, manifests, the daemon and the
CLI as subprocesses, a keep-alive load client, bounded waits, and cleanup of replicas.

Named ``reconciler_helpers`` (not conftest) so test modules import it under a name no other
test folder uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from data_plane_helpers import stop_data_plane
from listen_ports import free_port

from gitorch.errors import GitorchError
from gitorch.live.inventory import existing_cluster_name, local_node_name, runtime_dir
from gitorch.runtime.base import Runtime
from gitorch.state.location import StateLocation, parse_location

if TYPE_CHECKING:
    from gitorch.apply.session import Session
    from gitorch.manifests.model import DesiredState

REPO_ROOT = Path(__file__).resolve().parents[2]
API_APP = REPO_ROOT / "examples" / "apps" / "api" / "app.py"
BUILD_SH = REPO_ROOT / "examples" / "images" / "build.sh"
CLI_TIMEOUT = 120.0

T = TypeVar("T")


# -- small utilities -----------------------------------------------------------------------


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    interval: float = 0.1,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = describe() if describe else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{extra}")
        time.sleep(interval)


def port_open(port: int, address: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``address:port``."""
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- git ---------------------------------------------------------------------------------


def git(repo: Path, *args: str, author: str = "Ada Lovelace <ada@example.com>") -> str:
    name, email = author.rsplit(" <", 1)
    done = subprocess.run(
        ["git", "-c", f"user.name={name}", "-c", f"user.email={email.rstrip('>')}", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def init_repo(repo: Path) -> None:
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")


def commit(
    repo: Path,
    files: dict[str, str | None],
    message: str,
    author: str = "Ada Lovelace <ada@example.com>",
) -> str:
    """Write (or delete, value None) ``files`` and commit them; returns the new sha."""
    for path, text in files.items():
        target = repo / path
        if text is None:
            target.unlink()
        else:
            target.write_text(text, encoding="utf-8")
    git(repo, "add", "-A", "--", *files)
    git(repo, "commit", "-q", "-m", message, author=author)
    return git(repo, "rev-parse", "HEAD")


def push(work: Path) -> None:
    git(work, "push", "-q", "origin", "main")


# -- manifests ---------------------------------------------------------------------------


#: A ``strategy:`` block (``process_service(strategy=...)``): a canary that sends half the
#: traffic to the new version and waits there for `gitorch promote`.
CANARY_PAUSED_AT_HALF = """\
  strategy:
    type: Canary
    progressDeadlineSeconds: 120
    canary:
      steps:
        - setWeight: 50
        - pause: {}
"""


def process_service(
    name: str,
    *,
    port: int,
    version: str = "1",
    replicas: int = 3,
    env: dict[str, str] | None = None,
    deadline: int = 60,
    depends_on: Iterable[str] = (),
    command: list[str] | None = None,
    readiness: bool = True,
    initial_delay: int = 0,
    strategy: str | None = None,
) -> str:
    """A Service of the example api app on the process driver, with short probe periods.
    ``strategy``: the manifest's ``  strategy:`` block instead of a RollingUpdate."""
    all_env = {"VERSION": version, **(env or {})}
    cmd = command or [sys.executable, str(API_APP)]
    lines = [
        "apiVersion: gitorch.dev/v1",
        "kind: Service",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  command: {json.dumps(cmd)}",
        f"  env: {json.dumps(all_env)}",
        f"  replicas: {replicas}",
        "  ports:",
        "    - {name: http, containerPort: 8080}",
        f"  expose: {{port: {port}, targetPort: http, protocol: http}}",
        "  restartPolicy: Always",
        "  terminationGracePeriodSeconds: 5",
    ]
    if readiness:
        lines += [
            "  readinessProbe:",
            "    httpGet: {path: /healthz, port: http}",
            f"    initialDelaySeconds: {initial_delay}",
            "    periodSeconds: 1",
            "    timeoutSeconds: 1",
            "    failureThreshold: 1",
        ]
    if depends_on:
        lines.append(f"  dependsOn: {json.dumps(list(depends_on))}")
    if strategy is not None:
        return "\n".join(lines) + "\n" + strategy
    lines += [
        "  strategy:",
        "    type: RollingUpdate",
        f"    progressDeadlineSeconds: {deadline}",
        "    autoRollback: true",
        "    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}",
    ]
    return "\n".join(lines) + "\n"


def docker_service(
    name: str, *, port: int, image: str, replicas: int = 3, deadline: int = 60
) -> str:
    """A Service of the example api image (busybox httpd) on the Docker driver."""
    return f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  image: {image}
  replicas: {replicas}
  ports:
    - {{name: http, containerPort: 8080}}
  expose: {{port: {port}, targetPort: http, protocol: http}}
  restartPolicy: Always
  terminationGracePeriodSeconds: 5
  readinessProbe:
    httpGet: {{path: /cgi-bin/healthz, port: http}}
    periodSeconds: 1
    timeoutSeconds: 1
    failureThreshold: 1
  strategy:
    type: RollingUpdate
    progressDeadlineSeconds: {deadline}
    autoRollback: true
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
"""


# -- the CLI and the daemon --------------------------------------------------------------


def hold_port(port: int | None = None) -> socket.socket:
    """A socket listening on ``port`` (a free one by default), as a foreign process that
    holds the port would (no SO_REUSEPORT); close it to free the port."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", port if port is not None else free_port()))
    holder.listen(8)
    return holder


def cli_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NO_COLOR": "1"}
    env.pop("GITORCH_STATE", None)
    env.pop("GITORCH_DEBUG", None)
    return env


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.stdout, f"no stdout (exit {self.code}); stderr:\n{self.stderr}"
        return json.loads(self.stdout)


def gitorch(*args: str, cwd: Path, timeout: float = CLI_TIMEOUT) -> CliRun:
    """``python3 -m gitorch ARGS`` as a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "gitorch", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=cwd,
        timeout=timeout,
    )
    return CliRun(done.returncode, done.stdout, done.stderr)


class DaemonProc:
    """``gitorch daemon`` as a subprocess in its own session; stopped with SIGTERM.

    ``state`` is its local directory; ``store_url`` (``etcd://...``) puts the store in
    etcd, ``state`` then being the runtime directory (``--runtime-dir``)."""

    def __init__(
        self,
        repo: str,
        state: Path,
        runtime: str,
        *,
        interval: float = 2.0,
        resync: float = 0.5,
        extra: Iterable[str] = (),
        store_url: str | None = None,
        wait: bool = True,
        ca_file: Path | None = None,
    ) -> None:
        self.state = state
        self.port = free_port()
        # A daemon started with --tls-cert: its API is spoken to over HTTPS, trusting ca_file.
        self.tls = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self.log_path = state.parent / f"daemon-{self.port}.log"
        where = ["--state", str(state)]
        if store_url is not None:
            where = ["--state", store_url, "--runtime-dir", str(state)]
        argv = [
            sys.executable,
            "-m",
            "gitorch",
            "daemon",
            "--repo",
            repo,
            *where,
            "--runtime",
            runtime,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--interval",
            str(interval),
            "--resync",
            str(resync),
            *extra,
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=cli_env(),
                cwd=state.parent,
                start_new_session=True,
            )
        if wait:
            wait_for("the daemon's API", self._api_up, 30, describe=self.log_tail)

    def _api_up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"the daemon exited with {self.proc.returncode}\n{self.log_tail()}"
            )
        try:
            return self.request("GET", "/healthz")[0] in (200, 503)
        except OSError:
            return False

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        conn = (
            http.client.HTTPSConnection("127.0.0.1", self.port, timeout=15, context=self.tls)
            if self.tls is not None
            else http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        )
        try:
            conn.request(method, path, body=body or None, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode("utf-8", "replace")

    def status(self) -> dict[str, Any]:
        code, data = self.request("GET", "/api/v1/status")
        assert code == 200, (code, data)
        assert isinstance(data, dict)
        return data

    def service(self, name: str) -> dict[str, Any] | None:
        for svc in self.status()["services"]:
            if svc["name"] == name:
                return svc
        return None

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "daemon log (tail):\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def webhook_body(sha: str) -> bytes:
    return json.dumps({"ref": "refs/heads/main", "after": sha, "repository": {}}).encode()


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


# -- status helpers ----------------------------------------------------------------------


def converged(svc: dict[str, Any] | None, sha: str, replicas: int) -> bool:
    """Every instance of ``svc`` runs ``sha``, is ready, and there are exactly ``replicas``."""
    if svc is None:
        return False
    instances = svc["instances"]
    return (
        svc["rollout"]["phase"] == "Healthy"
        and svc["replicas"]["updated"] == replicas
        and len(instances) == replicas
        and all(i["revision"] == sha and i["ready"] and i["state"] == "running" for i in instances)
    )


def instance_ids(svc: dict[str, Any] | None) -> set[str]:
    return {i["id"] for i in svc["instances"]} if svc else set()


def get_body(port: int, path: str = "/") -> str | None:
    """The body of one GET through the balancer (None when it fails or is not a 200)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        conn.close()
    except OSError:
        return None
    return body if resp.status == 200 else None


def get_version(port: int, path: str = "/") -> str | None:
    """The ``version=N`` of one GET through the balancer (None when it fails)."""
    body = get_body(port, path)
    return None if body is None else _version_of(body)


def _version_of(body: str) -> str | None:
    for word in body.split():
        if word.startswith("version="):
            return word.split("=", 1)[1]
    return None


# -- load --------------------------------------------------------------------------------


@dataclass
class LoadClient:
    """N threads with keep-alive connections hammering ``port`` without pause.

    Every request is counted: a failure is an exception or a non-2xx answer (a connection
    the server closed while idle is re-opened and the request retried once, as any
    keep-alive client does: that is not a failed request).
    """

    port: int
    path: str = "/"
    threads: int = 4
    host: str = "127.0.0.1"
    timeout: float = 10.0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    versions: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> LoadClient:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(10)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def _one(self, conn: http.client.HTTPConnection) -> tuple[int, str]:
        conn.request("GET", self.path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _record(self, body: str) -> None:
        """A 2xx answer (called under the lock)."""
        self.ok += 1
        self.versions[_version_of(body) or "?"] += 1

    def _run(self) -> None:
        conn = self._connect()
        fresh = True
        while not self._stop.is_set():
            try:
                status, body = self._one(conn)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                conn = self._connect()
                if not fresh:
                    fresh = True
                    continue  # a reused connection closed by the server: retry on a new one
                self._fail(f"{type(exc).__name__}: {exc}")
                continue
            except OSError as exc:
                conn.close()
                conn = self._connect()
                fresh = True
                self._fail(f"{type(exc).__name__}: {exc}")
                continue
            fresh = False
            if 200 <= status < 300:
                with self._lock:
                    self._record(body)
            else:
                self._fail(f"HTTP {status}: {body.strip()[:120]}")
        conn.close()

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)
        time.sleep(0.01)  # a closed endpoint must not spin a core


# -- cleanup -----------------------------------------------------------------------------


def process_runtime(state: Path) -> Runtime:
    from gitorch.runtime.process import ProcessRuntime

    name = local_node_name()
    return ProcessRuntime(name, runtime_dir(state, name))


def docker_runtime() -> Runtime:
    from gitorch.runtime.docker import DEFAULT_ENDPOINT, DockerRuntime

    return DockerRuntime(local_node_name(), DEFAULT_ENDPOINT, timeout=15.0)


def build_example_images() -> None:
    """The example shop's images (examples/images/build.sh: idempotent, fast when built)."""
    done = subprocess.run(
        ["/bin/sh", str(BUILD_SH)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def require_docker_engine() -> None:
    """FAIL (never skip) when the Docker engine does not answer."""
    info = docker_runtime().node_info()
    if not info.ready:
        pytest.fail(f"the Docker engine does not answer: {info.message}")


def remove_cluster(runtime: Runtime, cluster: str | None) -> None:
    """Remove every replica and volume of ``cluster`` the runtime knows (teardown)."""
    if not cluster:
        return
    try:
        instances = runtime.list_instances(cluster)
    except GitorchError:
        return

    def remove(instance_id: str) -> None:
        with contextlib.suppress(GitorchError):
            runtime.remove(instance_id)

    # In parallel: a container's removal is mostly waiting for the engine.
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(remove, [i.id for i in instances]))
    with contextlib.suppress(GitorchError):
        for volume in runtime.list_volumes(cluster):
            with contextlib.suppress(GitorchError):
                runtime.remove_volume(volume.name, cluster)


def cluster_of(state: Path) -> str | None:
    return existing_cluster_name(state)


def pid_of(instance_id: str) -> int:
    """The pid in a process replica's runtime id (``<pid>-<start ticks>``)."""
    return int(instance_id.split("-", 1)[0])


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = [item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item]
    return {k.decode(): v.decode() for k, v in pairs}


# -- one test's world --------------------------------------------------------------------


@dataclass
class Cluster:
    """One test's world: a repo, a state dir, the daemons it started."""

    root: Path
    repo: Path
    state: Path
    driver: str = "process"
    port: int = field(default_factory=free_port)  # the first service's endpoint
    # A second service's endpoint: picked like ``port``, never ``port + 1``, which nothing
    # reserves (an etcd member of the same worker once listened there).
    second_port: int = field(default_factory=free_port)
    daemons: list[DaemonProc] = field(default_factory=list)
    store_url: str | None = None  # etcd://...: the store lives there, ``state`` is local
    store_dirs: list[Path] = field(default_factory=list)  # etcd: its members' data

    @property
    def store_location(self) -> str:
        """Where this world's store lives: the state directory, or its etcd URL."""
        return self.store_url or str(self.state)

    @property
    def session_state(self) -> StateLocation | None:
        """``SessionOptions.state`` for a Session of this world (None: the state dir)."""
        return None if self.store_url is None else parse_location(self.store_url)

    @property
    def state_args(self) -> list[str]:
        """The CLI options that name this world's state (``--state``, ``--runtime-dir``)."""
        if self.store_url is None:
            return ["--state", str(self.state)]
        return ["--state", self.store_url, "--runtime-dir", str(self.state)]

    def daemon(self, repo: str | None = None, **kwargs: object) -> DaemonProc:
        daemon = DaemonProc(
            repo or str(self.repo),
            self.state,
            self.driver,
            store_url=self.store_url,
            **kwargs,  # type: ignore[arg-type]
        )
        self.daemons.append(daemon)
        return daemon

    def cluster_name(self) -> str | None:
        """The replicas' cluster label: the state directory's file, or etcd's record."""
        if self.store_url is None:
            return cluster_of(self.state)
        from gitorch.state import StateStore
        from gitorch.state.etcd.backend import EtcdBackend

        try:
            with StateStore(self.store_url, readonly=True) as store:
                assert isinstance(store.backend, EtcdBackend)
                return store.backend.cluster_name()
        except GitorchError:
            return None

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        stop_data_plane(self.state)  # it outlives the daemons by design
        cluster = self.cluster_name()
        remove_cluster(process_runtime(self.state), cluster)
        if self.driver == "docker":
            remove_cluster(docker_runtime(), cluster)


# -- a Session in the test's process ----------------------------------------------------


def desired_at_head(cluster: Cluster) -> DesiredState:
    """The desired state of the cluster repo's newest commit, as the daemon loads it."""
    from gitorch.manifests.loader import load_desired
    from gitorch.sources import open_source

    source = open_source(str(cluster.repo), cache_root=cluster.state / "cache")
    return load_desired(source.snapshot(source.resolve(None), ""))


def converge_session(session: Session, desired: DesiredState, timeout: float = 60.0) -> None:
    """Pass until a pass converges with nothing left to do (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = session.reconciler_for(desired).reconcile(desired)
        if result.converged and not result.actions:
            return
        time.sleep(0.2)
    pytest.fail("the cluster did not converge")
