"""Helpers for the multi-node tests: one test's ``World``, Node and Service manifests that
run on process and docker nodes alike, and readers of where replicas run.

Several nodes on one machine: ``kind: Node`` objects with the process driver and distinct
names (each has its own bookkeeping folder under the state dir), plus one docker node
whose endpoint is a private dockerd (``private_dockerd.PrivateEngine``, shared with the
runtime tests), on its own socket, data root, containerd and bridge, so SIGKILLing it
never touches the main engine the rest of the suite uses.

The same Service runs on both kinds of node: its command is busybox's httpd serving the
relative folder ``www`` on ``$PORT``. In a container (the example image, workdir ``/``)
that is the image's ``/www`` and PORT is the container port; on a process node it is the
``www`` folder the test writes into the daemon's working directory, and PORT the port the
process driver allocated. The shell is the manifest's (busybox httpd cannot read its port
from the environment); gitorch itself never runs one.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_plane_helpers import stop_data_plane
from reconciler_helpers import CliRun, DaemonProc, cluster_of, gitorch

from gitorch.errors import GitorchError
from gitorch.live.inventory import runtime_dir
from gitorch.runtime.base import Runtime

IMAGE = "gitorch-example/api:1"

#: The daemon's timings the multi-node tests are written for.
NODE_GRACE = 3.0
RESYNC = 0.5
INTERVAL = 2.0
SERVE = ["/bin/busybox", "sh", "-c", 'exec /bin/busybox httpd -f -p "$PORT" -h www']


# -- manifests ---------------------------------------------------------------------------


def node_yaml(
    name: str,
    *,
    driver: str = "process",
    endpoint: str | None = None,
    cpu: str = "2",
    memory: str = "1Gi",
    labels: dict[str, str] | None = None,
    taints: Sequence[tuple[str, str, str]] = (),
) -> str:
    """A Node with explicit capacity (so placements do not depend on the machine)."""
    runtime: dict[str, str] = {"driver": driver}
    if endpoint:
        runtime["endpoint"] = endpoint
    lines = [
        "apiVersion: gitorch.dev/v1",
        "kind: Node",
        "metadata:",
        f"  name: {name}",
        f"  labels: {json.dumps(labels or {})}",
        "spec:",
        f"  runtime: {json.dumps(runtime)}",
        "  address: 127.0.0.1",
        f"  capacity: {json.dumps({'cpu': cpu, 'memory': memory})}",
    ]
    if taints:
        lines.append("  taints:")
        lines += [f"    - {json.dumps({'key': k, 'value': v, 'effect': e})}" for k, v, e in taints]
    return "\n".join(lines) + "\n"


def service_yaml(
    name: str,
    *,
    port: int,
    replicas: int,
    cpu: str | None = None,
    memory: str | None = None,
    anti_affinity_self: bool = False,
    tolerations: Sequence[tuple[str, str, str]] = (),
    priority: int = 0,
    node_selector: dict[str, str] | None = None,
    version: str = "1",
) -> str:
    """A Service of busybox httpd that runs on process and docker nodes alike."""
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    placement: dict[str, Any] = {}
    if anti_affinity_self:
        placement["serviceAntiAffinity"] = [
            {"service": name, "topologyKey": "node", "required": True}
        ]
    if tolerations:
        placement["tolerations"] = [
            {"key": k, "operator": "Equal", "value": v, "effect": e} for k, v, e in tolerations
        ]
    if priority:
        placement["priority"] = priority
    if node_selector:
        placement["nodeSelector"] = node_selector
    lines = [
        "apiVersion: gitorch.dev/v1",
        "kind: Service",
        "metadata:",
        f"  name: {name}",
        "spec:",
        f"  image: {IMAGE}",
        f"  command: {json.dumps(SERVE)}",
        f"  env: {json.dumps({'MN_VERSION': version})}",
        f"  replicas: {replicas}",
        "  ports:",
        "    - {name: http, containerPort: 8080}",
        f"  expose: {{port: {port}, targetPort: http, protocol: http}}",
        "  restartPolicy: Always",
        "  terminationGracePeriodSeconds: 2",
        "  readinessProbe:",
        "    httpGet: {path: /, port: http}",
        "    periodSeconds: 1",
        "    timeoutSeconds: 1",
        "    failureThreshold: 1",
        "  strategy:",
        "    type: RollingUpdate",
        "    progressDeadlineSeconds: 60",
        "    autoRollback: true",
        "    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}",
    ]
    if requests:
        lines.append(f"  resources: {json.dumps({'requests': requests})}")
    if placement:
        lines.append(f"  placement: {json.dumps(placement)}")
    return "\n".join(lines) + "\n"


def write_www(folder: Path) -> None:
    """The ``www`` folder process replicas serve (relative to the daemon's directory)."""
    www = folder / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "index.html").write_text("app=multinode driver=process\n", encoding="utf-8")


# -- reading where replicas run ------------------------------------------------------------


def where(svc: dict[str, Any] | None) -> dict[str, str]:
    """replica label -> node, of the running instances of a status service."""
    if svc is None:
        return {}
    return {i["replica"]: i["node"] for i in svc["instances"] if i["state"] == "running"}


def settled(svc: dict[str, Any] | None, replicas: int) -> bool:
    """Exactly ``replicas`` instances, all running and ready, one per slot, phase Healthy."""
    if svc is None:
        return False
    instances = svc["instances"]
    slots = Counter(i["replica"] for i in instances)
    return (
        svc["rollout"]["phase"] == "Healthy"
        and len(instances) == replicas
        and all(i["state"] == "running" and i["ready"] for i in instances)
        and all(n == 1 for n in slots.values())
    )


def plan_json(repo: Path, state: Path, cwd: Path) -> tuple[int, dict[str, Any]]:
    """``gitorch plan --format json`` (exit code, document)."""
    done = gitorch("plan", "--repo", str(repo), "--state", str(state), "--format", "json", cwd=cwd)
    assert done.code in (0, 2), (done.code, done.stderr)
    return done.code, done.json()


def placements_of(plan: dict[str, Any]) -> dict[str, str]:
    return {p["replica"]: p["node"] for p in plan["placements"]}


def nodes_json(state: Path, cwd: Path) -> dict[str, dict[str, Any]]:
    done: CliRun = gitorch("nodes", "--state", str(state), "--format", "json", cwd=cwd)
    assert done.code == 0, (done.code, done.stderr)
    return {n["name"]: n for n in done.json()["nodes"]}


# -- cleanup -------------------------------------------------------------------------------


def node_runtimes(
    state: Path, process_nodes: Iterable[str], docker_nodes: dict[str, str]
) -> list[Runtime]:
    """The runtimes of a test's nodes (process: its bookkeeping dir; docker: its endpoint)."""
    from gitorch.runtime.docker import DockerRuntime
    from gitorch.runtime.process import ProcessRuntime

    found: list[Runtime] = [ProcessRuntime(n, runtime_dir(state, n)) for n in process_nodes]
    found += [DockerRuntime(n, e, timeout=10.0) for n, e in docker_nodes.items()]
    return found


def remove_instances(runtime: Runtime, cluster: str) -> None:
    """Every replica and volume of ``cluster`` on one node."""
    try:
        instances = runtime.list_instances(cluster)
    except GitorchError:
        return  # the engine is down: the private engine's own shutdown removes them
    for instance in instances:
        with contextlib.suppress(GitorchError):
            runtime.remove(instance.id)
    with contextlib.suppress(GitorchError):
        for volume in runtime.list_volumes(cluster):
            with contextlib.suppress(GitorchError):
                runtime.remove_volume(volume.name, cluster)


# -- one test's world ------------------------------------------------------------------------


@dataclass
class World:
    """One test's cluster: repo, state dir, daemons, and its nodes (for cleanup)."""

    root: Path
    repo: Path
    state: Path
    process_nodes: list[str] = field(default_factory=list)
    docker_nodes: dict[str, str] = field(default_factory=dict)  # name -> endpoint
    daemons: list[DaemonProc] = field(default_factory=list)

    def daemon(self) -> DaemonProc:
        """``gitorch daemon --node-grace 3 --resync 0.5 --interval 2`` on this world."""
        daemon = DaemonProc(
            str(self.repo),
            self.state,
            "process",
            interval=INTERVAL,
            resync=RESYNC,
            extra=("--node-grace", str(NODE_GRACE)),
        )
        self.daemons.append(daemon)
        return daemon

    def teardown(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        stop_data_plane(self.state)  # it outlives the daemons by design
        cluster = cluster_of(self.state)
        if not cluster:
            return
        for runtime in node_runtimes(self.state, self.process_nodes, self.docker_nodes):
            remove_instances(runtime, cluster)
