"""The typed desired state: one frozen dataclass per kind, defaults applied.

Objects are built only from documents that passed the schema, so construction here
never guesses. Quantities are normalised (cpu in millicores, memory in bytes, durations
in seconds). Every object keeps where it came from (:class:`Origin`) and two digests:

* ``digest``: of the whole canonical object; any change a user makes changes it;
* ``template_digest`` (Services): of what a replica *runs* (image, command, env, ports,
  resources, probes, volumes...). Replicas carry it as a label; a replica whose label
  differs from the desired one must be replaced. Changing ``replicas``, ``strategy`` or
  ``dependsOn`` changes ``digest`` but not ``template_digest``, so it rolls nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Origin:
    """Where a manifest object was defined: file (relative to repo root) and document."""

    path: str
    document: int  # index of the YAML document in the file, from 0


@dataclass(frozen=True)
class SecretRef:
    """Where a secret value comes from: a file under the daemon's ``--secrets-dir``
    (``file``), or a key of a ``kind: Secret`` in the repo, encrypted for the daemon's
    age key (``secret``, ``key``). The value itself never enters the model: ``digest``
    (set by :mod:`gitorch.secrets` before a pass) is a keyed digest of it, so a new
    value changes the template digest and rolls the service."""

    file: str | None = None
    secret: str | None = None
    key: str | None = None
    digest: str | None = None

    def describe(self) -> str:
        if self.file is not None:
            return f"secretFile {self.file!r}"
        return f"key {self.key!r} of Secret {self.secret!r}"


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str | None = None
    secret_file: str | None = None  # read at apply time from the operator's secrets dir
    ref: SecretRef | None = None  # any secret reference (secret_file's too)

    @property
    def is_secret(self) -> bool:
        return self.secret_file is not None or self.ref is not None


@dataclass(frozen=True)
class SecretFileMount:
    """A secret delivered as a file ``name``: read-only, on memory-backed storage, in the
    folder ``$SECRETS_DIR`` names (``/run/secrets`` in a container)."""

    name: str
    ref: SecretRef


@dataclass(frozen=True)
class Port:
    name: str
    container_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class ExposeTls:
    """TLS termination of an endpoint: PEM files under the operator's secrets directory."""

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class Expose:
    port: int
    target_port: str | int  # a port name or number, as written
    protocol: str = "http"
    tls: ExposeTls | None = None


@dataclass(frozen=True)
class ResourceList:
    cpu_millis: int | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True)
class Resources:
    requests: ResourceList = ResourceList()
    limits: ResourceList = ResourceList()

    @property
    def qos_class(self) -> str:
        """Kubernetes' QoS classes: Guaranteed, Burstable or BestEffort."""
        req, lim = self.requests, self.limits
        if lim.cpu_millis is not None and lim.memory_bytes is not None:
            cpu_req = req.cpu_millis if req.cpu_millis is not None else lim.cpu_millis
            mem_req = req.memory_bytes if req.memory_bytes is not None else lim.memory_bytes
            if cpu_req == lim.cpu_millis and mem_req == lim.memory_bytes:
                return "Guaranteed"
        if any(
            v is not None
            for v in (req.cpu_millis, req.memory_bytes, lim.cpu_millis, lim.memory_bytes)
        ):
            return "Burstable"
        return "BestEffort"


@dataclass(frozen=True)
class Probe:
    http_path: str | None = None
    http_port: str | int | None = None
    tcp_port: str | int | None = None
    exec_command: tuple[str, ...] = ()
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @property
    def handler(self) -> str:
        if self.http_path is not None:
            return "httpGet"
        if self.tcp_port is not None:
            return "tcpSocket"
        return "exec"


@dataclass(frozen=True)
class PrometheusQuery:
    address: str
    query: str
    success_condition: str


@dataclass(frozen=True)
class Analysis:
    interval_seconds: float = 10.0
    count: int = 3
    failure_limit: int = 0
    min_requests: int = 20
    success_rate: float | None = 0.99
    max_latency_p99_seconds: float | None = None
    prometheus: PrometheusQuery | None = None


@dataclass(frozen=True)
class CanaryStep:
    """Exactly one of the three is set."""

    set_weight: int | None = None
    pause_seconds: float | None = None  # None with is_pause: wait for `gitorch promote`
    is_pause: bool = False
    analysis: Analysis | None = None

    def describe(self) -> str:
        if self.set_weight is not None:
            return f"setWeight {self.set_weight}%"
        if self.is_pause:
            if self.pause_seconds is None:
                return "pause until `gitorch promote`"
            from gitorch.manifests.quantities import format_duration

            return f"pause {format_duration(self.pause_seconds)}"
        return "analysis"


@dataclass(frozen=True)
class MatchRule:
    header: str | None = None  # header name
    cookie: str | None = None  # cookie name
    exact: str | None = None
    regex: str | None = None


@dataclass(frozen=True)
class RollingUpdate:
    max_surge: int | str = "25%"
    max_unavailable: int | str = 0


@dataclass(frozen=True)
class BlueGreen:
    preview_port: int | None = None
    auto_promotion_seconds: int | None = None
    scale_down_delay_seconds: int = 30
    pre_promotion_analysis: Analysis | None = None


@dataclass(frozen=True)
class Canary:
    """Canary steps, optional background analysis, and stickiness.

    ``sticky_sessions`` (``stickySessions``, a gitorch extension): a client keeps the version
    it was first given (by a cookie) while that version's weight stays above 0, so one user
    never flips between versions mid-session; an abort (weight 0) moves it back.
    """

    steps: tuple[CanaryStep, ...] = ()
    analysis: Analysis | None = None
    sticky_sessions: bool = False


@dataclass(frozen=True)
class ABTest:
    match: tuple[MatchRule, ...] = ()
    duration_seconds: float = 600.0
    analysis: Analysis | None = None
    promote: bool = True


@dataclass(frozen=True)
class Strategy:
    type: str = "RollingUpdate"
    min_ready_seconds: int = 0
    progress_deadline_seconds: int = 600
    auto_rollback: bool = True
    rolling_update: RollingUpdate = RollingUpdate()
    blue_green: BlueGreen | None = None
    canary: Canary | None = None
    ab_test: ABTest | None = None


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


@dataclass(frozen=True)
class WeightedMatch:
    weight: int
    match: Mapping[str, str]


@dataclass(frozen=True)
class ServiceAffinityTerm:
    service: str
    topology_key: str = "node"
    required: bool = False
    weight: int = 1


@dataclass(frozen=True)
class SpreadConstraint:
    topology_key: str
    max_skew: int = 1
    when_unsatisfiable: str = "DoNotSchedule"


@dataclass(frozen=True)
class Placement:
    node_selector: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    node_affinity: tuple[WeightedMatch, ...] = ()
    service_anti_affinity: tuple[ServiceAffinityTerm, ...] = ()
    service_affinity: tuple[ServiceAffinityTerm, ...] = ()
    spread: tuple[SpreadConstraint, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    max_per_node: int = 0
    priority: int = 0


@dataclass(frozen=True)
class VolumeMount:
    name: str
    volume: str
    mount_path: str
    read_only: bool = False


@dataclass(frozen=True)
class AutoscaleMetric:
    """One metric of ``spec.autoscale.metrics`` (which target applies depends on ``type``)."""

    type: str  # cpu | memory | rps | latency | prometheus
    target_average_utilization: int | None = None  # cpu, memory: percent of requests
    target_average_value: float | None = None  # rps: per replica
    query: str | None = None  # prometheus
    address: str | None = None  # prometheus server (None: the daemon's --prometheus)
    target_value: float | None = None  # prometheus
    target_p99_seconds: float | None = None  # latency

    @property
    def target(self) -> float:
        """The target in the unit the metric is measured in (percent, rps, ms, value)."""
        if self.type in ("cpu", "memory"):
            return float(self.target_average_utilization or 0)
        if self.type == "rps":
            return float(self.target_average_value or 0.0)
        if self.type == "latency":
            return float(self.target_p99_seconds or 0.0) * 1000.0
        return float(self.target_value or 0.0)


@dataclass(frozen=True)
class ScalingPolicy:
    """At most ``value`` pods (or percent of the count at the period's start) per period."""

    type: str  # Pods | Percent
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    """``behavior.scaleUp`` or ``behavior.scaleDown`` (autoscaling/v2 semantics)."""

    stabilization_seconds: int
    select_policy: str = "Max"  # Max | Min | Disabled
    policies: tuple[ScalingPolicy, ...] = ()


#: Kubernetes' defaults: up by 4 pods or 100% per 15 s (the larger), at once; down by
#: 100% per 15 s after a 300 s stabilization window.
DEFAULT_SCALE_UP = ScalingRules(
    0, "Max", (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15))
)
DEFAULT_SCALE_DOWN = ScalingRules(300, "Max", (ScalingPolicy("Percent", 100, 15),))


@dataclass(frozen=True)
class VerticalScaling:
    """``autoscale.vertical``: recommendations of requests from observed usage."""

    mode: str = "Recommend"  # Off | Recommend | Auto
    min_allowed: ResourceList = ResourceList()
    max_allowed: ResourceList = ResourceList()


@dataclass(frozen=True)
class Autoscale:
    min_replicas: int
    max_replicas: int
    metrics: tuple[AutoscaleMetric, ...]
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    vertical: VerticalScaling | None = None

    @property
    def scale_down_stabilization_seconds(self) -> int:
        return self.scale_down.stabilization_seconds

    @property
    def scale_up_stabilization_seconds(self) -> int:
        return self.scale_up.stabilization_seconds


@dataclass(frozen=True)
class Service:
    """One deployable workload and its stable endpoint."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    image: str | None
    command: tuple[str, ...]
    args: tuple[str, ...]
    working_dir: str | None
    env: tuple[EnvVar, ...]
    replicas: int
    ports: tuple[Port, ...]
    expose: Expose | None
    resources: Resources
    readiness_probe: Probe | None
    liveness_probe: Probe | None
    startup_probe: Probe | None
    restart_policy: str
    termination_grace_seconds: int
    depends_on: tuple[str, ...]
    drift: str
    strategy: Strategy
    placement: Placement
    volumes: tuple[VolumeMount, ...]
    autoscale: Autoscale | None
    canonical: Mapping[str, Any]  # the canonical form (JSON-ready, defaults applied)
    digest: str
    template_digest: str
    origin: Origin
    secret_files: tuple[SecretFileMount, ...] = ()

    kind = "Service"

    def port_number(self, ref: str | int) -> int | None:
        """Container port that a port name or number refers to."""
        if isinstance(ref, int):
            return ref
        for port in self.ports:
            if port.name == ref:
                return port.container_port
        return None


@dataclass(frozen=True)
class Taint:
    key: str
    value: str | None
    effect: str


@dataclass(frozen=True)
class TLSConfig:
    """A ``tcp://`` engine's TLS: PEM files named under the operator's secrets directory."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class SSHConfig:
    """An ``ssh://`` engine's key and known hosts, named under the operator's secrets
    directory (None: the daemon user's ``~/.ssh`` and agent)."""

    identity_file: str | None = None
    known_hosts_file: str | None = None


#: ``spec.ingress``: when a node's host serves exposed services itself.
INGRESS_REPLICAS = "replicas"  # while it runs replicas of an exposed service or a dependency
INGRESS_ALWAYS = "always"
INGRESS_NEVER = "never"


@dataclass(frozen=True)
class Node:
    """A machine gitorch places replicas on."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    driver: str
    endpoint: str | None
    tls: TLSConfig | None
    address: str
    capacity: ResourceList  # None fields: ask the runtime
    taints: tuple[Taint, ...]
    unschedulable: bool
    drain: bool  # cordon and move replicas off (extension: see docs/manifests.md)
    canonical: Mapping[str, Any]
    digest: str
    origin: Origin
    ssh: SSHConfig | None = None
    ingress: str = INGRESS_REPLICAS

    kind = "Node"


#: Volume access modes (Kubernetes' names).
READ_WRITE_ONCE = "ReadWriteOnce"
READ_ONLY_MANY = "ReadOnlyMany"
READ_WRITE_MANY = "ReadWriteMany"


@dataclass(frozen=True)
class Volume:
    """Storage that outlives replicas. ``ReadWriteOnce`` lives on one node (``node``, or
    where its first user is placed) and has one writer at a time; the ``Many`` modes need
    a backend that can share (``host_path``, or a Docker volume driver with options)."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    size_bytes: int | None
    access_mode: str
    reclaim_policy: str
    node: str | None
    canonical: Mapping[str, Any]
    digest: str
    origin: Origin
    host_path: str | None = None  # a node directory instead of a managed volume
    driver: str | None = None  # docker only: the volume driver (None: local)
    driver_opts: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    kind = "Volume"

    @property
    def single_node(self) -> bool:
        """ReadWriteOnce: bound to one node, one writer at a time."""
        return self.access_mode == READ_WRITE_ONCE

    @property
    def docker_only(self) -> bool:
        """A Docker volume driver or its options: only docker nodes can mount it."""
        return self.driver is not None or bool(self.driver_opts)

    @property
    def can_share(self) -> bool:
        """A backend several nodes (and writers) can use: a host path the operator
        provides, or a Docker volume driver with options (NFS and friends)."""
        return (
            self.host_path is not None
            or bool(self.driver_opts)
            or (self.driver is not None and self.driver != "local")
        )


@dataclass(frozen=True)
class Secret:
    """Secret values kept in the repo, each encrypted for the daemon's age key (armored
    age ciphertext per key: a SOPS-style file, the keys readable, the values not)."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    encrypted: Mapping[str, str]  # key -> ASCII-armored age ciphertext
    canonical: Mapping[str, Any]
    digest: str
    origin: Origin

    kind = "Secret"


#: The label every node of a pool carries, naming its pool.
POOL_LABEL = "gitorch.dev/node-pool"


@dataclass(frozen=True)
class NodePool:
    """Nodes made and removed on demand through an operator's provider command.

    ``command`` is run with ``create``, ``delete`` or ``list`` appended, a JSON request on
    its stdin and a JSON answer on its stdout (see docs/manifests.md). Every node it makes
    looks like the template: ``labels`` (plus :data:`POOL_LABEL`), ``capacity``,
    ``taints``, a Docker runtime at the endpoint the provider returns."""

    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    min_nodes: int
    max_nodes: int
    node_labels: Mapping[str, str]
    capacity: ResourceList
    taints: tuple[Taint, ...]
    command: tuple[str, ...]
    timeout_seconds: float
    scale_up_after: float  # seconds replicas stay unschedulable before a node is made
    utilization_below: float  # a node requested under this fraction is a candidate ...
    scale_down_after: float  # ... once it stayed so this many seconds
    canonical: Mapping[str, Any]
    digest: str
    origin: Origin
    #: ``template.runtime.tls``: its nodes' engines are spoken to over TLS only (the
    #: provider must return ``tcp://`` endpoints), as a Node's ``runtime.tls``.
    tls: TLSConfig | None = None

    kind = "NodePool"


ManifestObject = Service | Node | Volume | Secret | NodePool


@dataclass(frozen=True)
class DesiredState:
    """Everything the repo asks for at one revision, validated."""

    revision: str  # commit sha ("worktree" for uncommitted files)
    root_path: str
    services: Mapping[str, Service]
    nodes: Mapping[str, Node]
    volumes: Mapping[str, Volume]
    digest: str  # of all objects' digests: equal digests, equal desired state
    # Encrypted secret values; not applied objects themselves (no inventory, no plan
    # entry): what they change shows in the Services that use them.
    secrets: Mapping[str, Secret] = field(default_factory=dict)
    node_pools: Mapping[str, NodePool] = field(default_factory=dict)

    def objects(self) -> list[ManifestObject]:
        """All objects in a stable order (kind, then name)."""
        out: list[ManifestObject] = []
        out.extend(self.nodes[name] for name in sorted(self.nodes))
        out.extend(self.node_pools[name] for name in sorted(self.node_pools))
        out.extend(self.volumes[name] for name in sorted(self.volumes))
        out.extend(self.services[name] for name in sorted(self.services))
        return out
