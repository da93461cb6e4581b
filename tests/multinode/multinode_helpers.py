"""Helpers for the multi-node tests: a private Docker engine the tests may kill, Node and
Service manifests that run on process and docker nodes alike, and readers of where
replicas run.

Several nodes on one machine: ``kind: Node`` objects with the process driver and distinct
names (each has its own bookkeeping folder under the state dir), plus one docker node
whose endpoint is a dockerd started here, on its own socket, data root, containerd and
bridge, so SIGKILLing it never touches the main engine the rest of the suite uses.

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
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# -- the private engine ------------------------------------------------------------------

_CONTAINERD_TOML = """\
version = 2
root = "{root}/ctd/root"
state = "{root}/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{root}/ctd/ctd.sock"
[ttrpc]
  address = "{root}/ctd/ctd.sock.ttrpc"
[debug]
  address = "{root}/ctd/debug.sock"
"""


class EngineError(AssertionError):
    """The private engine could not be started (a test failure, never a skip)."""


@dataclass
class PrivateEngine:
    """containerd + dockerd of our own, on a bridge of our own.

    containerd runs apart from dockerd (as under systemd) so that a SIGKILLed dockerd
    leaves containerd alive and a new dockerd starts at once. Not ``--bridge=none``: a
    dockerd started with it deletes docker0, which belongs to the main engine. No
    iptables (published ports go through docker-proxy), vfs storage (no overlay mounts to
    leak). Short paths: containerd's socket path must fit in 108 bytes.
    """

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mn", dir="/tmp")))
    bridge: str = field(default_factory=lambda: f"mn{uuid.uuid4().hex[:6]}")
    dockerd: subprocess.Popen[bytes] | None = None
    containerd: subprocess.Popen[bytes] | None = None
    _logs: list[Any] = field(default_factory=list, repr=False)

    @property
    def endpoint(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def running(self) -> bool:
        return self.dockerd is not None and self.dockerd.poll() is None

    def _log(self, name: str) -> Any:
        handle = open(self.root / name, "ab")  # noqa: SIM115 (closed in shutdown)
        self._logs.append(handle)
        return handle

    def tail(self, name: str = "dockerd.log") -> str:
        try:
            return (self.root / name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def boot(self) -> None:
        for tool in ("dockerd", "containerd", "ip"):
            if shutil.which(tool) is None:
                raise EngineError(f"{tool} is not installed (apt-get install docker.io iproute2)")
        # 198.19.0.0/15 is reserved for benchmarks (RFC 2544): no clash with real networks.
        subnet = f"198.19.{int(self.bridge[-2:], 16)}.1/24"
        for argv in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", subnet, "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise EngineError(f"{' '.join(argv)}: {done.stderr.strip()}")
        (self.root / "ctd").mkdir()
        config = self.root / "ctd" / "config.toml"
        config.write_text(_CONTAINERD_TOML.format(root=self.root))
        self.containerd = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdout=self._log("containerd.log"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not (self.root / "ctd" / "ctd.sock").exists():
            if self.containerd.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"containerd did not start:\n{self.tail('containerd.log')}")
            time.sleep(0.02)
        self.start()

    def start(self) -> None:
        """Start dockerd (again) and wait until it answers."""
        (self.root / "pid").unlink(missing_ok=True)  # left behind by a SIGKILL
        self.dockerd = subprocess.Popen(
            [
                "dockerd",
                f"--host={self.endpoint}",
                f"--containerd={self.root}/ctd/ctd.sock",
                f"--data-root={self.root}/data",
                f"--exec-root={self.root}/exec",
                f"--pidfile={self.root}/pid",
                f"--bridge={self.bridge}",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--storage-driver=vfs",
            ],
            stdout=self._log("dockerd.log"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self.answers():
            if self.dockerd.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"the private dockerd did not start:\n{self.tail()}")
            time.sleep(0.05)

    def answers(self) -> bool:
        done = subprocess.run(
            ["docker", "-H", self.endpoint, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            check=False,
            timeout=10,
        )
        return done.returncode == 0

    def kill(self) -> None:
        """SIGKILL dockerd: the node stops answering (its containers' ports close too)."""
        assert self.dockerd is not None
        self.dockerd.kill()
        self.dockerd.wait(timeout=10)

    def load_image(self, image: str) -> None:
        """Copy ``image`` from the main engine (no registry here either)."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "-H", self.endpoint, "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(timeout=60) != 0 or load.returncode != 0:
            raise EngineError(f"loading {image} into the private engine failed: {load.stderr}")

    def containers(self, cluster: str) -> list[dict[str, Any]]:
        """Every container of ``cluster`` on this engine, running or not (docker ps -a)."""
        done = subprocess.run(
            [
                "docker",
                "-H",
                self.endpoint,
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                f"label=dev.gitorch.cluster={cluster}",
                "--format",
                "{{json .}}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        )
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def remove_all(self) -> None:
        if not self.running:
            return
        done = subprocess.run(
            ["docker", "-H", self.endpoint, "ps", "-aq"],
            capture_output=True,
            text=True,
            check=False,
            timeout=20,
        )
        ids = done.stdout.split()
        if ids:
            subprocess.run(
                ["docker", "-H", self.endpoint, "rm", "-f", *ids],
                capture_output=True,
                check=False,
                timeout=60,
            )

    def shutdown(self) -> None:
        """Stop dockerd and containerd, unmount, delete the files and the bridge."""
        with contextlib.suppress(Exception):
            self.remove_all()
        for proc in (self.dockerd, self.containerd):
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for handle in self._logs:
            handle.close()
        # dockerd bind-mounts parts of its data root; a killed one never unmounts them.
        mounts = [
            line.split()[1]
            for line in Path("/proc/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.root))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


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
    try:
        instances = runtime.list_instances(cluster)
    except GitorchError:
        return  # the engine is down: the private engine's own shutdown removes them
    for instance in instances:
        with contextlib.suppress(GitorchError):
            runtime.remove(instance.id)


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
        cluster = cluster_of(self.state)
        if not cluster:
            return
        for runtime in node_runtimes(self.state, self.process_nodes, self.docker_nodes):
            remove_instances(runtime, cluster)
