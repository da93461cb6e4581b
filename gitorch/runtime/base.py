"""The node runtime layer: the one interface gitorch uses to run replicas.

A :class:`Runtime` runs replicas on one node. Drivers (``docker``, ``process``) implement
it; nothing else in gitorch touches an engine or spawns a workload. Every instance a
driver creates carries gitorch's labels, so after any restart :meth:`Runtime.list_instances`
rediscovers exactly what this cluster runs: the runtime is the ground truth of live state.

All methods raise subclasses of :class:`~gitorch.errors.RuntimeDriverError` only, and
never block for longer than their timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

#: Label keys gitorch puts on every instance it creates.
LABEL_CLUSTER = "dev.gitorch.cluster"
LABEL_SERVICE = "dev.gitorch.service"
LABEL_REPLICA = "dev.gitorch.replica"
LABEL_REVISION = "dev.gitorch.revision"  # commit sha the replica was created from
LABEL_SPEC_DIGEST = "dev.gitorch.spec-digest"
LABEL_NODE = "dev.gitorch.node"
#: On a replica: the Volumes it mounts and how (``data:rw,cfg:ro``), so their users (and
#: writers) are known from the runtime alone. On a volume: its name in Git.
LABEL_VOLUMES = "dev.gitorch.volumes"
LABEL_VOLUME = "dev.gitorch.volume"
#: On a volume: its recorded size in bytes (kept, not enforced: see the drivers).
LABEL_SIZE = "dev.gitorch.size"
#: On a host's ingress container and its state volume: the cluster it serves. (Not the
#: cluster label: an ingress is no replica, and replicas are listed by that one.)
LABEL_INGRESS = "dev.gitorch.ingress"


@dataclass(frozen=True)
class PortRequest:
    """A port the replica listens on; the runtime allocates a host port on the node.

    ``host_port`` pins the host port instead (``None``, the default, lets the runtime pick
    a free ephemeral one); a pinned port that is already taken raises
    :class:`~gitorch.errors.PortInUse`.
    """

    name: str
    container_port: int
    protocol: str = "tcp"
    host_port: int | None = None


@dataclass(frozen=True)
class Probe:
    """A health probe, already resolved to concrete ports.

    Exactly one of ``http_path`` (with ``port``), ``tcp`` (with ``port``) or ``exec_command``.
    ``port`` is the replica's *container* port; the runtime maps it to where it is reachable.
    """

    http_path: str | None = None
    port: int | None = None
    tcp: bool = False
    exec_command: tuple[str, ...] = ()
    timeout_seconds: float = 1.0


@dataclass(frozen=True)
class VolumeSpec:
    """A Volume as a driver makes it on one node (no gitorch model types inside).

    ``host_path``: an operator's directory instead of a managed volume (the driver checks
    it against its allowed directories, symlinks resolved). ``driver``/``driver_opts``:
    a Docker volume driver and its options (docker nodes only). ``size_bytes`` is kept
    with the volume; neither driver enforces it on its default backend.
    """

    name: str  # the Volume's name in Git
    host_path: str | None = None
    driver: str | None = None
    driver_opts: Mapping[str, str] = field(default_factory=dict)
    size_bytes: int | None = None


@dataclass(frozen=True)
class Mount:
    """A volume as one replica sees it: at ``target`` (docker), and through the env var
    ``VOLUME_<NAME>`` (both drivers: see :func:`volume_env_name`)."""

    name: str  # the mount's name in the Service (``spec.volumes[].name``)
    volume: VolumeSpec
    target: str  # mountPath
    read_only: bool = False


@dataclass(frozen=True)
class VolumeInfo:
    """A volume a driver holds on its node."""

    name: str  # the Volume's name in Git
    node: str
    handle: str  # the Docker volume's name, or the directory (process driver)
    size_bytes: int | None = None  # recorded, not enforced
    created_at: float | None = None
    host_path: str | None = None


def volume_env_name(mount_name: str) -> str:
    """``VOLUME_<NAME>``: the variable that tells a replica where a mount is (``data`` ->
    ``VOLUME_DATA``, ``job-log`` -> ``VOLUME_JOB_LOG``)."""
    return "VOLUME_" + "".join(c if c.isalnum() else "_" for c in mount_name.upper())


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a driver needs to create one replica (no gitorch model types inside).

    ``image`` is used by the docker driver; the process driver requires ``command``.
    ``labels`` must include at least service, replica, revision and spec digest.
    """

    name: str  # unique per cluster, human readable: "<cluster>-<service>-<replica>"
    image: str | None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    ports: tuple[PortRequest, ...] = ()
    cpu_limit: float | None = None  # cores
    memory_limit: int | None = None  # bytes
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_grace_seconds: float = 10.0
    mounts: tuple[Mount, ...] = ()  # volumes, made beforehand (Runtime.create_volume)
    #: Names the replica's container resolves (name -> address, or ``host-gateway``):
    #: its dependencies' ingress (docker; the process driver shares the host's names).
    extra_hosts: Mapping[str, str] = field(default_factory=dict)
    # Secret values: given to the replica, never written to a driver's records. Env vars
    # (visible to whoever can inspect the engine), and files (name -> bytes) placed
    # read-only on memory-backed storage, in the folder $SECRETS_DIR names.
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    secret_files: Mapping[str, bytes] = field(default_factory=dict, repr=False)


#: The env var naming the folder of a replica's secret files.
SECRETS_DIR_ENV = "SECRETS_DIR"


class InstanceState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"  # the node did not answer: not the same as gone


@dataclass(frozen=True)
class PortBinding:
    name: str
    container_port: int
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class Instance:
    """One replica as the runtime sees it right now."""

    id: str  # runtime id (container id, or "<pid>-<start ticks>" for processes)
    name: str
    node: str
    state: InstanceState
    labels: Mapping[str, str]
    ports: tuple[PortBinding, ...] = ()
    exit_code: int | None = None
    restarts: int = 0
    started_at: float | None = None  # unix time
    image: str | None = None
    #: Why an exited instance ended, in words: ``"OOMKilled"`` (the kernel killed it for
    #: going over its memory limit), ``"exit N"``, ``"signal N"``; None while it runs or
    #: when nobody knows (a process replica that exited while no daemon was its parent).
    exit_reason: str | None = None
    #: Unix time an exited instance ended (None while it runs, or when nobody knows): the
    #: crash-loop back-off counts from the exit, not from when a pass noticed it.
    finished_at: float | None = None

    def address(self, port_name: str | None = None) -> str | None:
        """``host:port`` of the named port (or the first one)."""
        for binding in self.ports:
            if port_name is None or binding.name == port_name:
                return f"{binding.host_ip}:{binding.host_port}"
        return None


@dataclass(frozen=True)
class ResourceUsage:
    cpu_percent: float  # of one core (100.0 == one full core)
    memory_bytes: int


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str  # short human text: "HTTP 200", "connection refused", "exit 1"
    duration_seconds: float


@dataclass(frozen=True)
class EngineAccess:
    """How a remote Docker engine is reached, with every file resolved to a path.

    ``tls``: speak TLS to a ``tcp://`` endpoint (``ca_cert`` verifies the engine when
    ``verify``; ``client_cert``/``client_key`` authenticate gitorch). ``identity_file`` and
    ``known_hosts_file``: an ``ssh://`` endpoint's key and the host keys it trusts (None:
    ``~/.ssh`` of the daemon's user, and its agent). ``problem``: why the settings cannot
    be used (a file missing from the secrets directory): the node is NotReady, saying so.
    """

    tls: bool = False
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True
    identity_file: str | None = None
    known_hosts_file: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class NodeInfo:
    """Capacity and health of the node a runtime drives."""

    name: str
    driver: str
    ready: bool
    cpu_cores: float
    memory_bytes: int
    address: str  # where published ports are reached
    message: str = ""  # why not ready
    #: How resource limits are enforced on this node, in words: ``"cgroup v1 (memory,
    #: cpu)"``, or ``"not enforced: ..."`` with the reason (then limits are only recorded).
    limits: str = ""
    version: str = ""  # the engine's version ("20.10.24"); "" for the process driver
    #: How the engine is reached: ``unix socket``, ``tls (verified)``, ``tls (not
    #: verified)``, ``tls (not set up)`` (its files are missing), ``tcp (no TLS)``,
    #: ``ssh``; ``local`` for the process driver.
    transport: str = ""
    rtt_ms: float | None = None  # one round trip to the engine (None: not measured)


@dataclass(frozen=True)
class RetainedLog:
    """What is left of a removed replica: its last output and how it ended.

    Drivers keep these for the last few removed replicas of each service (see
    :meth:`Runtime.retained_logs`). ``output`` is the end of stdout and stderr together,
    at most ~64 KiB (``truncated`` when more was written). Never holds the env.
    """

    name: str  # the instance name ("<cluster>-web-2")
    replica: str  # the slot label ("web-2")
    service: str
    node: str
    instance_id: str
    revision: str | None
    exit_code: int | None
    exit_reason: str | None  # as Instance.exit_reason
    started_at: float | None
    finished_at: float | None  # when it exited (None: unknown)
    removed_at: float
    output: str
    truncated: bool = False


@dataclass(frozen=True)
class IngressSpec:
    """What a host's ingress runs: an image gitorch made (``image_tar``, loaded when the
    engine lacks ``image``), its command and environment. It shares the host's network."""

    image: str
    image_tar: str  # path of the image's root filesystem (a gzip tar)
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    state_dir: str = "/var/lib/gitorch"  # a volume of its own, kept across restarts


@dataclass(frozen=True)
class IngressState:
    """A host's ingress container as its engine reports it."""

    id: str
    image: str
    running: bool
    status: str  # the engine's word: running, restarting, exited...
    started_at: float | None = None


@runtime_checkable
class IngressHost(Protocol):
    """A runtime whose node is a host of its own that can run its ingress (the Docker
    driver, for a remote engine). The ingress is one container per cluster and node."""

    node_name: str

    def ingress(self, cluster: str) -> IngressState | None:
        """The ingress container of ``cluster`` here, if there is one."""
        ...

    def start_ingress(self, cluster: str, spec: IngressSpec) -> IngressState:
        """Create and start the ingress (replacing one of another image)."""
        ...

    def remove_ingress(self, cluster: str) -> None:
        """Stop and remove the ingress (its state volume too); fine when there is none."""
        ...

    def ingress_channel(self, cluster: str, command: tuple[str, ...]) -> IngressChannel:
        """Run ``command`` in the ingress; its stdin and stdout as a byte channel."""
        ...


class IngressChannel(Protocol):
    """The stdin and stdout of a command run in an ingress (a Docker exec session)."""

    #: Seconds a read waits for an answer once the command answered a first time: the
    #: caller has given up on a request this long after sending it.
    timeout: float

    def send(self, data: bytes) -> None: ...

    def receive(self, size: int) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class Runtime(Protocol):
    """A node's runtime. One instance per node; safe to recreate at any time."""

    node_name: str
    driver: str

    def node_info(self) -> NodeInfo:
        """Capacity and health; never raises for an unreachable engine (ready=False)."""
        ...

    def list_instances(self, cluster: str) -> list[Instance]:
        """Every instance labelled with ``cluster``, running or not."""
        ...

    def create(self, spec: ReplicaSpec, cluster: str) -> Instance:
        """Create and start a replica; return it once the runtime reports it running."""
        ...

    def stop(self, instance_id: str, grace_seconds: float) -> None:
        """SIGTERM, wait up to ``grace_seconds``, then kill. Stopping a stopped one is fine."""
        ...

    def remove(self, instance_id: str) -> None:
        """Remove a stopped (or running: it is killed first) instance and its resources."""
        ...

    def inspect(self, instance_id: str) -> Instance:
        """Current state of one instance; :class:`InstanceNotFound` when it is gone."""
        ...

    def logs(self, instance_id: str, tail: int = 100) -> str:
        """The last ``tail`` lines of stdout and stderr."""
        ...

    def follow_logs(
        self, instance_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Iterator[str]:
        """The last ``tail`` lines, then every new line as the replica writes it, each
        without its newline; ends when the replica has exited (or is removed) and all of
        its output was given, or soon (within half a second) after ``stop`` is set, even
        while the replica writes nothing: a reader on another thread stops it that way
        (closing the iterator only works between lines, from the thread that reads).
        :class:`InstanceNotFound` is raised at once, not at the first ``next()``."""
        ...

    def retained_logs(self, cluster: str, service: str) -> list[RetainedLog]:
        """Output and facts of the last removed replicas of ``service``, newest first
        (kept under the driver's state directory; [] when it has none)."""
        ...

    def usage(self, instance_id: str) -> ResourceUsage:
        """Current cpu and memory use."""
        ...

    def probe(self, instance: Instance, probe: Probe) -> ProbeResult:
        """Run one health probe against a replica; never raises for a failing replica."""
        ...

    def create_volume(self, spec: VolumeSpec, cluster: str) -> VolumeInfo:
        """Make the volume on this node, or adopt the one of that name already there (its
        data is kept): idempotent. :class:`~gitorch.errors.VolumeError` when it cannot."""
        ...

    def list_volumes(self, cluster: str) -> list[VolumeInfo]:
        """Every volume of ``cluster`` on this node."""
        ...

    def remove_volume(self, name: str, cluster: str) -> None:
        """Remove the volume and its data (a host path's directory is never deleted);
        removing one that is gone is fine. VolumeError while a replica still uses it."""
        ...
