"""Helpers for the live-state tests (tests/live and tests/cli/test_status_nodes.py).

There is no ``gitorch apply`` yet, so a test plays its part: it loads a small manifest with
the real :class:`ManifestLoader`, starts the replicas with a real :class:`Runtime` (labels
as apply will set them) and records the rollout in a real :class:`StateStore`.

Kept out of conftest.py so test modules can import it under a name no other test folder
uses. The runtime suite's constants come from ``runtime_helpers`` (tests/runtime is on
pytest's pythonpath) and its session fixtures from ``tests/runtime/conftest.py`` (loaded
by path under a name of its own: every folder's conftest is named "conftest").
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from runtime_helpers import DOCKER_ENDPOINT

from gitorch.errors import InstanceNotFound, RuntimeDriverError
from gitorch.live import LiveState, NodeTarget
from gitorch.live.inventory import runtime_dir
from gitorch.live.observe import assess_readiness
from gitorch.manifests import ManifestLoader, Service
from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    Instance,
    PortRequest,
    ReplicaSpec,
    Runtime,
)
from gitorch.runtime.process import ProcessRuntime
from gitorch.state import RevisionResult, RolloutPhase, RolloutRecord, StateStore

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_API_APP = REPO_ROOT / "examples" / "apps" / "api" / "app.py"
EXAMPLE_BUILD_SH = REPO_ROOT / "examples" / "images" / "build.sh"
#: The example api image (examples/images/build.sh); health at /cgi-bin/healthz.
EXAMPLE_API_IMAGE = "gitorch-example/api:1"
SHA_1 = "1" * 40
SHA_2 = "2" * 40


def _load_runtime_conftest() -> ModuleType:
    path = REPO_ROOT / "tests" / "runtime" / "conftest.py"
    spec = importlib.util.spec_from_file_location("gitorch_tests_runtime_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


#: tests/runtime/conftest.py: the runtime suite's fixtures (docker_client, test_images, ...)
runtime_fixtures = _load_runtime_conftest()
# The runtime suite's session fixtures, reused as they are (an engine that does not
# answer FAILS the test; the test images are built once and only when changed). Import
# them (and example_images below) into a conftest or test module to use them.
docker_client = runtime_fixtures.docker_client
test_images = runtime_fixtures.test_images


# -- manifests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestFile:
    """A file as ManifestLoader reads it (a Snapshot's file without Git)."""

    path: str
    data: bytes
    blob_id: str = field(default="")

    def __post_init__(self) -> None:
        if not self.blob_id:
            # the loader caches per (path, blob id): a distinct id per content is enough
            object.__setattr__(self, "blob_id", hashlib.sha1(self.data).hexdigest())


def service_yaml(
    name: str,
    *,
    replicas: int = 2,
    command: Iterable[str] | None = None,
    image: str | None = None,
    env: Mapping[str, str] | None = None,
    probe_path: str | None = None,
    cpu: str = "100m",
    memory: str = "32Mi",
    expose_port: int | None = None,
) -> str:
    """A small Service manifest (flow style, so no indentation games)."""
    lines = [
        "apiVersion: gitorch.dev/v1",
        "kind: Service",
        f"metadata: {{name: {name}}}",
        "spec:",
    ]
    if image is not None:
        lines.append(f"  image: {image}")
    if command is not None:
        lines.append("  command: [" + ", ".join(f'"{c}"' for c in command) + "]")
    if env:
        lines.append("  env: {" + ", ".join(f'{k}: "{v}"' for k, v in env.items()) + "}")
    lines.append(f"  replicas: {replicas}")
    if probe_path is not None:
        lines.append("  ports: [{name: http, containerPort: 8080}]")
        lines.append(
            f"  readinessProbe: {{httpGet: {{path: {probe_path}, port: http}}, timeoutSeconds: 2}}"
        )
    if expose_port is not None:
        lines.append(f"  expose: {{port: {expose_port}, targetPort: http, protocol: http}}")
    lines.append(f"  resources: {{requests: {{cpu: {cpu}, memory: {memory}}}}}")
    return "\n".join(lines) + "\n"


def load_services(*manifests: str, revision: str = SHA_1) -> dict[str, Service]:
    """Services from manifest texts, through the real loader (fails on any diagnostic)."""
    files = [ManifestFile(f"svc{i}.yaml", text.encode()) for i, text in enumerate(manifests)]
    result = ManifestLoader().load(files, revision=revision)
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return dict(result.state.services)


# -- the "apply" a test does by hand -----------------------------------------------------


def replica_spec(
    service: Service,
    number: int,
    cluster: str,
    *,
    revision: str = SHA_1,
    digest: str | None = None,
) -> ReplicaSpec:
    """The ReplicaSpec apply would build for replica ``number`` of ``service``."""
    return ReplicaSpec(
        name=f"{cluster}-{service.name}-{number}",
        image=service.image,
        command=service.command,
        args=service.args,
        env={e.name: str(e.value) for e in service.env if e.value is not None},
        ports=tuple(PortRequest(p.name, p.container_port) for p in service.ports),
        labels={
            LABEL_SERVICE: service.name,
            LABEL_REPLICA: str(number),
            LABEL_REVISION: revision,
            LABEL_SPEC_DIGEST: digest if digest is not None else service.template_digest,
        },
        stop_grace_seconds=2.0,
    )


def start_replicas(
    runtime: Runtime,
    service: Service,
    cluster: str,
    count: int | None = None,
    *,
    first: int = 1,
    revision: str = SHA_1,
    digest: str | None = None,
) -> list[Instance]:
    """Create ``count`` (default: the service's replicas) replicas of ``service``."""
    count = service.replicas if count is None else count
    return [
        runtime.create(replica_spec(service, n, cluster, revision=revision, digest=digest), cluster)
        for n in range(first, first + count)
    ]


def record_rollout(
    store: StateStore,
    service: Service,
    *,
    revision: str = SHA_1,
    phase: RolloutPhase = RolloutPhase.HEALTHY,
    step: int | None = None,
    weight: int = 100,
    last_error: str | None = None,
    message: str = "",
) -> RolloutRecord:
    """Record ``service`` as applied (its rollout record), as apply will."""
    return store.upsert_rollout(
        RolloutRecord(
            service=service.name,
            revision=revision,
            spec_digest=service.template_digest,
            strategy=str(service.canonical["spec"]["strategy"]["type"]),
            phase=phase,
            spec=dict(service.canonical),
            step=step,
            weight=weight,
            last_error=last_error,
            message=message,
        )
    )


def record_applied_revision(
    store: StateStore,
    sha: str,
    services: Iterable[str],
    *,
    result: RevisionResult = RevisionResult.SUCCEEDED,
    reason: str = "",
) -> None:
    """An application of ``sha`` that ended with ``result``."""
    record = store.record_revision(sha, author="test <t@example.com>", services=list(services))
    store.finish_revision(record.id, result, reason=reason)


def remove_cluster(runtime: Runtime, cluster: str) -> None:
    """Remove every instance of ``cluster`` on ``runtime`` (fixture cleanup)."""
    try:
        instances = runtime.list_instances(cluster)
    except RuntimeDriverError:
        return
    for instance in instances:
        try:
            runtime.remove(instance.id)
        except InstanceNotFound:
            continue


# -- waiting -----------------------------------------------------------------------------


def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout}s: {value!r}")
        time.sleep(interval)


def assess_until_answering(
    live: LiveState, runtimes: Mapping[str, Runtime], timeout: float = 20.0
) -> LiveState:
    """assess_readiness until every running replica's probe got an HTTP answer.

    A freshly started app refuses connections for a moment; this waits for "HTTP nnn"
    (ready or not) so a test asserts on the app's answer, not on its start-up.
    """

    last: list[str] = []

    def attempt() -> LiveState | None:
        assessed = assess_readiness(live, runtimes)
        last[:] = [f"{r.name}: {r.probe_message}" for r in assessed.replicas()]
        answered = all(
            r.probe_message.startswith("HTTP ") or r.probe_message.endswith("no readiness probe)")
            for r in assessed.replicas()
            if r.state == "running"
        )
        return assessed if answered else None

    try:
        return eventually(attempt, timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"probes still not answered after {timeout}s: {last}") from None


# -- docker ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def example_images(docker_client: Any) -> str:
    """The example shop's images (examples/images/build.sh: idempotent, ~0.4 s when
    nothing changed), for the api's FAIL_MODE=unhealthy; returns the api's tag."""
    done = subprocess.run(
        ["/bin/sh", str(EXAMPLE_BUILD_SH)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return EXAMPLE_API_IMAGE


def closed_tcp_endpoint() -> str:
    """``tcp://127.0.0.1:<port>`` where nothing listens (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def process_target(name: str) -> NodeTarget:
    return NodeTarget(name=name, driver="process")


def docker_target(name: str, endpoint: str = DOCKER_ENDPOINT) -> NodeTarget:
    return NodeTarget(name=name, driver="docker", endpoint=endpoint)


# -- nodes -------------------------------------------------------------------------------


@dataclass
class LiveNodeKit:
    """A real node (target + runtime) and the driver-specific way to describe workloads."""

    driver: str
    target: NodeTarget
    runtime: Runtime
    idle_image: str | None = None
    api_image: str | None = None

    @property
    def name(self) -> str:
        return self.target.name

    def idle(self, name: str, **kwargs: Any) -> str:
        """A manifest of a workload that just runs (no port, no probe)."""
        if self.driver == "docker":
            return service_yaml(name, image=self.idle_image, **kwargs)
        return service_yaml(name, command=["/bin/sleep", "600"], **kwargs)

    def api(self, name: str, *, fail_mode: str = "", **kwargs: Any) -> str:
        """The example api with an http readiness probe; ``fail_mode="unhealthy"``: 503."""
        env = {"FAIL_MODE": fail_mode} if fail_mode else {}
        if self.driver == "docker":
            return service_yaml(
                name, image=self.api_image, env=env, probe_path="/cgi-bin/healthz", **kwargs
            )
        env = {"HOST": "127.0.0.1", **env}
        return service_yaml(
            name,
            command=[sys.executable, str(EXAMPLE_API_APP)],
            env=env,
            probe_path="/healthz",
            **kwargs,
        )


def process_kit(state_dir: Path, name: str = "node-p") -> LiveNodeKit:
    """A process node whose bookkeeping is where the CLI looks for it."""

    return LiveNodeKit(
        "process",
        NodeTarget(name=name, driver="process"),
        ProcessRuntime(name, runtime_dir(state_dir, name)),
    )
