"""The Docker driver: replicas are containers on one Docker engine.

Design decisions (also in the class docstring of :class:`DockerRuntime`):

* **Low-level API client, created lazily.** ``docker.APIClient(version="auto")`` asks the
  engine for its API version when it is built, so building it eagerly would make a
  :class:`DockerRuntime` impossible to construct while the engine is down. The client is
  built on first use and rebuilt after a failure, so a restarted engine is picked up by
  the same runtime object.
* **Every call has a timeout.** The SDK's socket timeout bounds every HTTP request; calls
  that legitimately wait longer (stop with a grace period, container wait) extend it by
  exactly that wait. Connection refused, reset, or timed out all become
  :class:`~gitorch.errors.EngineUnavailable`.
* **Docker picks the host port.** Ports are published on ``address`` with host port
  ``None`` and read back from the container after start. Picking a free port ourselves
  would race with every other process between our check and Docker's bind; Docker's own
  allocator binds atomically and retries on collisions. A pinned
  :attr:`PortRequest.host_port` is honoured and a taken one raises ``PortInUse``.
* **docker-init (tini) is PID 1.** A workload's own process then keeps the default signal
  dispositions (PID 1 ignores SIGTERM unless it installs a handler), so SIGTERM behaves as
  it does under the process driver, and zombies are reaped.
* **gitorch owns restarts**: restart policy ``"no"``.
* **Stop returns at the exit**, not when ``docker stop`` would (after the engine's
  clean-up: network, port proxies, mounts; up to a second on a busy host): the
  container's ``die`` events are watched from before the stop signal is sent. The
  clean-up is :meth:`DockerRuntime.remove`'s to wait for, so a rollout starts its next
  replicas meanwhile. Until then the engine's port proxy still accepts on the
  container's published ports, so a stopped container probes as stopped, not by port.
* **Instances are found by labels** (cluster and node), so a new runtime object
  rediscovers everything; port names travel in a label because Docker has none.
* **Removed containers leave their output behind**: with a ``state_dir``, :meth:`remove`
  reads the end of the container's logs and its exit facts first (killing it first if it
  still runs) and keeps them for ``gitorch logs --previous`` (:mod:`._retained`).
* **Exit reasons** come from the engine: ``State.OOMKilled`` is ``"OOMKilled"``. Docker
  20.10 on cgroup v1 can lose that flag (its exit handler overwrites what the OOM event set
  when the two arrive in the other order), so a container with a memory limit that died by
  SIGKILL is also looked up in the engine's event log: an ``oom`` event for it means
  ``"OOMKilled"`` too. Otherwise a code from 129 to 192 reads as ``"signal N"`` (Docker reports a death by signal N as 128 + N,
  so a program that itself exits with such a code reads the same).
* **Volumes are named volumes** ``<cluster>_<node>_<volume>``, labelled with the cluster,
  node and Volume name (the local driver, or the Volume's driver and options: NFS and
  friends). A ``hostPath`` is a local volume binding that directory (``type=none,
  o=bind``), so it is listed, labelled and removed like any other (removing it leaves the
  directory). A replica is never created while one of its volumes is missing: Docker
  would make an empty one silently. The size is a label: the local driver cannot enforce
  one (only a tmpfs takes ``o=size=``, through ``driverOpts``).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import math
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.tls
import paramiko
import requests.exceptions

from gitorch.errors import (
    EngineUnavailable,
    EngineUntrusted,
    GitorchError,
    ImageNotFound,
    InstanceNotFound,
    PortInUse,
    ReplicaStartFailed,
    RuntimeDriverError,
    VolumeError,
)
from gitorch.runtime import _secret_files
from gitorch.runtime._retained import RetainedStore, tail_bytes
from gitorch.runtime._ssh import PLACEHOLDER_VERSION, ssh_client
from gitorch.runtime._volume_dirs import check_host_path
from gitorch.runtime.base import (
    LABEL_CLUSTER,
    LABEL_INGRESS,
    LABEL_NODE,
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SIZE,
    LABEL_VOLUME,
    SECRETS_DIR_ENV,
    EngineAccess,
    IngressSpec,
    IngressState,
    Instance,
    InstanceState,
    NodeInfo,
    PortBinding,
    Probe,
    ProbeResult,
    ReplicaSpec,
    ResourceUsage,
    RetainedLog,
    VolumeInfo,
    VolumeSpec,
    volume_env_name,
)
from gitorch.runtime.probes import http_check, tcp_check

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ENDPOINT",
    "default_endpoint",
    "LABEL_PORTS",
    "DockerRuntime",
    "DockerTLS",
    "docker_available",
]

DEFAULT_ENDPOINT = "unix:///var/run/docker.sock"

#: Label holding ``name=containerPort/proto`` pairs: Docker keeps no port names.
LABEL_PORTS = "dev.gitorch.ports"
#: On a hostPath volume: the directory it binds.
LABEL_HOST_PATH = "dev.gitorch.host-path"

_T = TypeVar("_T")

# Docker container names: [a-zA-Z0-9][a-zA-Z0-9_.-]+
_NAME_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_.-]")
_PORT_TAKEN_PATTERNS = ("port is already allocated", "address already in use")
#: Lines of a removed container's log read to keep its last ``OUTPUT_BYTES``.
_RETAIN_LINES = 4000

#: How often a followed stream's watcher looks whether its reader asked it to stop.
_FOLLOW_STOP_POLL = 0.25

#: Seconds an ingress's relay may take to answer one control request.
INGRESS_CALL_TIMEOUT = 5.0
#: ... and its first, which includes starting the relay (a Python process in the
#: container): seconds under load on a busy host.
INGRESS_FIRST_CALL_TIMEOUT = 30.0
#: Engine calls at once over one ssh connection (sshd's MaxSessions is 10 by default; the
#: ingress's relay session and a log stream's take more).
SSH_SESSIONS = 6
#: Seconds between two reads of an engine's facts (``docker info``) by node_info; the
#: ping that tells it answers is every call.
FACTS_EVERY = 30.0
#: A running container listed as before (same state, ports and image) is not inspected
#: again for this long (seconds): an observation is one listing, not an inspect per
#: container (issue 20: 12 engine calls per pass of a 10-replica rollout, 10-30 ms each
#: beside a client's load). Its ``die`` event (the daemon reads them) drops it sooner.
INSPECT_KEPT_FOR = 30.0


@dataclass(frozen=True)
class DockerTLS:
    """TLS settings for a ``tcp://`` endpoint (paths to PEM files)."""

    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    verify: bool = True

    @classmethod
    def of(cls, access: EngineAccess) -> DockerTLS:
        return cls(access.ca_cert, access.client_cert, access.client_key, access.verify)

    def access(self) -> EngineAccess:
        return EngineAccess(True, self.ca_cert, self.client_cert, self.client_key, self.verify)

    def to_sdk(self) -> docker.tls.TLSConfig:
        """The docker SDK's TLS configuration for these settings."""
        cert = None
        if self.client_cert and self.client_key:
            cert = (self.client_cert, self.client_key)
        elif self.client_cert or self.client_key:
            raise EngineUnavailable("Docker TLS needs both a client certificate and its key")
        try:
            return docker.tls.TLSConfig(
                client_cert=cert,
                ca_cert=self.ca_cert,
                verify=self.ca_cert if (self.verify and self.ca_cert) else self.verify,
            )
        except docker.errors.TLSParameterError as exc:
            raise EngineUnavailable(f"invalid Docker TLS settings: {exc}") from exc


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (each once)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend([current.__cause__, current.__context__])
        todo.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        if isinstance(current, paramiko.ssh_exception.NoValidConnectionsError):
            # ssh's connect keeps each address's socket error in a dict; its own errno is
            # None ("[Errno None] Unable to connect to port 22 on ...").
            todo.extend(current.errors.values())


def _engine_error(node: str, endpoint: str, exc: BaseException) -> EngineUnavailable:
    """The failure to reach ``node``'s engine, in words that name the node and say what to
    fix: a certificate or key refused is :class:`EngineUntrusted`, the rest is
    "not answering" with its cause (refused, timed out, unreachable)."""
    where = f"node {node}: Docker engine at {endpoint}"
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return EngineUntrusted(
                f"{where}: TLS: the engine's certificate was not verified with the node's "
                f"CA (runtime.tls.caCert): {cause.verify_message or cause.reason}"
            )
        if isinstance(cause, ssl.SSLError):
            return EngineUntrusted(
                f"{where}: TLS handshake failed (a client certificate the engine does not "
                f"accept, or a server that is not TLS): {cause.reason or cause}"
            )
        if isinstance(cause, paramiko.BadHostKeyException):
            return EngineUntrusted(f"{where}: ssh: the host key does not match known hosts")
        if isinstance(cause, paramiko.AuthenticationException):
            return EngineUntrusted(f"{where}: ssh: authentication failed ({cause})")
        if isinstance(cause, paramiko.SSHException) and "known_hosts" in str(cause):
            return EngineUntrusted(
                f"{where}: ssh: the host key is not in known hosts (runtime.ssh.knownHostsFile "
                f"or ~/.ssh/known_hosts): {cause}"
            )
    for cause in _causes(exc):
        if isinstance(cause, FileNotFoundError) and endpoint.startswith("unix://"):
            return EngineUnavailable(
                f"{where} is not answering: no socket there (is dockerd running?)"
            )
        if isinstance(cause, OSError) and cause.errno in _UNREACHABLE:
            return EngineUnavailable(f"{where} is not answering: {_UNREACHABLE[cause.errno]}")
        # urllib3 keeps the socket's error only as text in its own ("[Errno 113] No route").
        found = re.search(r"\[Errno (\d+)\]", str(cause))
        if found and int(found.group(1)) in _UNREACHABLE:
            return EngineUnavailable(
                f"{where} is not answering: {_UNREACHABLE[int(found.group(1))]}"
            )
    for cause in _causes(exc):
        if isinstance(cause, requests.exceptions.Timeout | TimeoutError | socket.timeout):
            return EngineUnavailable(f"{where} is not answering: timed out ({cause})")
    return EngineUnavailable(f"{where} is not answering: {type(exc).__name__}: {exc}")


#: Socket errors that say plainly why an engine is not reached.
_UNREACHABLE = {
    errno.ECONNREFUSED: "connection refused (no engine listens there)",
    errno.EHOSTUNREACH: "no route to host (the host is down or its address is wrong)",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNRESET: "connection reset",
}


def _build_client(
    endpoint: str,
    timeout: float | None,
    access: EngineAccess | None,
    *,
    node: str = "",
    version: str = "auto",
) -> docker.APIClient:
    """A connected low-level client (``version="auto"`` talks to the engine once)."""
    access = access or EngineAccess()
    if access.problem:
        raise EngineUnavailable(access.problem)
    try:
        if endpoint.startswith("ssh://"):
            return ssh_client(
                endpoint,
                timeout,
                identity_file=access.identity_file,
                known_hosts_file=access.known_hosts_file,
                version=version,
            )
        tls_config: docker.tls.TLSConfig | bool = (
            DockerTLS.of(access).to_sdk() if access.tls else False
        )
        # Not from the environment: requests would let $REQUESTS_CA_BUNDLE (set on many
        # machines) replace the node's CA, and $HTTP_PROXY divert the engine's API.
        client = docker.APIClient(
            base_url=endpoint,
            version=PLACEHOLDER_VERSION if version == "auto" else version,
            timeout=timeout,
            tls=tls_config,
        )
        client.trust_env = False
        if version == "auto":
            try:
                client._version = client._retrieve_server_version()
            except BaseException:
                client.close()  # its pooled sockets, now rather than at collection
                raise
        return client
    except (
        docker.errors.DockerException,
        requests.exceptions.RequestException,
        paramiko.SSHException,
        OSError,
    ) as exc:
        raise _engine_error(node or "?", endpoint, exc) from exc


def default_endpoint() -> str:
    """``$DOCKER_HOST`` if set (as the docker CLI does), else the local socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_ENDPOINT


def docker_available(endpoint: str | None = None, timeout: float = 1.0) -> bool:
    """Whether a Docker engine answers a ping at ``endpoint`` within ``timeout`` seconds.

    ``endpoint`` defaults to :func:`default_endpoint`.
    """
    try:
        client = _build_client(endpoint or default_endpoint(), timeout, None, node="local")
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (GitorchError, docker.errors.DockerException, requests.exceptions.RequestException):
        return False
    except OSError:
        return False


#: Where a container finds its secret files (as Docker Swarm and Compose put them).
CONTAINER_SECRETS_DIR = "/run/secrets"


def _container_name(name: str) -> str:
    cleaned = _NAME_BAD_CHARS.sub("-", name).lstrip("_.-")
    return cleaned or "gitorch-replica"


def _bridge_gateway(api: docker.APIClient) -> str | None:
    """The IPv4 gateway of the engine's default bridge network (None when it has none or
    cannot say). The default bridge an engine makes at its first start states no gateway
    in its IPAM config (Docker 20.10; it does after a restart): then it is the address of
    the bridge's interface, when that interface is on this host and its address lies in
    the network's subnet."""
    try:
        network = api.inspect_network("bridge")
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return None
    configs = (network.get("IPAM") or {}).get("Config") or []
    for config in configs:
        gateway = str(config.get("Gateway") or "")
        if gateway and ":" not in gateway:
            return gateway
    interface = str((network.get("Options") or {}).get("com.docker.network.bridge.name") or "")
    address = _interface_ipv4(interface) if interface else None
    if address is None:
        return None
    for config in configs:
        subnet = str(config.get("Subnet") or "")
        with suppress(ValueError):
            if ":" not in subnet and ipaddress.ip_address(address) in ipaddress.ip_network(
                subnet, strict=False
            ):
                return address
    return None


#: ioctl(2) request for an interface's IPv4 address (linux/sockios.h).
_SIOCGIFADDR = 0x8915


def _interface_ipv4(name: str) -> str | None:
    """The IPv4 address of this host's network interface ``name`` (None without one)."""
    encoded = name.encode()
    if not encoded or len(encoded) > 15:  # IFNAMSIZ - 1
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", encoded))
        except OSError:  # no such interface here, or no IPv4 address on it
            return None
    # struct ifreq: the name (16 bytes), then a sockaddr_in: family, port, address.
    return socket.inet_ntoa(answer[20:24])


def _owned_here(address: str) -> bool:
    """Whether ``address`` is one of this host's own (a socket can be bound to it): not
    so for an engine in another network namespace, a VM (Docker Desktop) or rootless
    Docker, whose bridge lives elsewhere."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def _parse_time(value: str | None) -> float | None:
    """Docker timestamps (RFC 3339 with nanoseconds) to unix time; zero time -> None."""
    if not value or value.startswith("0001-"):
        return None
    # Python's fromisoformat takes at most microseconds: trim the fraction to 6 digits.
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        return None
    base, frac, zone = match.groups()
    frac = (frac or "")[:7]
    zone = "+00:00" if zone == "Z" else zone
    try:
        return datetime.fromisoformat(f"{base}{frac}{zone}").timestamp()
    except ValueError:
        return None


def _encode_ports(spec: ReplicaSpec) -> str:
    return ",".join(f"{p.name}={p.container_port}/{p.protocol}" for p in spec.ports)


def _decode_ports(label: str) -> dict[str, str]:
    """``"http=8080/tcp,..."`` -> ``{"8080/tcp": "http"}``."""
    names: dict[str, str] = {}
    for item in filter(None, label.split(",")):
        name, _, port = item.partition("=")
        names[port] = name
    return names


def _port_env(spec: ReplicaSpec) -> dict[str, str]:
    """PORT (first port) and PORT_<NAME> set to the container port the app must listen on."""
    env: dict[str, str] = {}
    for index, port in enumerate(spec.ports):
        if index == 0:
            env["PORT"] = str(port.container_port)
        key = re.sub(r"[^A-Z0-9_]", "_", port.name.upper())
        env[f"PORT_{key}"] = str(port.container_port)
    return env


def _exit_reason(state: Mapping[str, Any], oom_event: bool = False) -> str:
    """How an exited container ended, in words (see the module docstring)."""
    if state.get("OOMKilled") or oom_event:
        return "OOMKilled"
    code = int(state.get("ExitCode") or 0)
    return f"signal {code - 128}" if 128 < code <= 128 + 64 else f"exit {code}"


def _limits_line(info: Mapping[str, Any]) -> str:
    """``gitorch nodes``' limits column from ``docker info``."""
    enforced = [
        name for name, key in (("memory", "MemoryLimit"), ("cpu", "CpuCfsQuota")) if info.get(key)
    ]
    if not enforced:
        return "not enforced: the engine reports no memory or cpu limit support"
    version = info.get("CgroupVersion") or "?"
    return f"cgroup v{version} ({', '.join(enforced)}) by Docker"


def _listing_key(summary: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a container's listing says that its last inspection must still match."""
    ports = tuple(
        sorted(
            (str(p.get("IP", "")), int(p.get("PrivatePort") or 0), int(p.get("PublicPort") or 0))
            for p in summary.get("Ports") or ()
            if p.get("PublicPort")  # an exposed port not published has none
        )
    )
    return (str(summary.get("State", "")), ports, summary.get("Image"), summary.get("ImageID"))


def _inspected_key(attrs: Mapping[str, Any]) -> tuple[Any, ...]:
    """:func:`_listing_key` of a container, from its inspection."""
    published = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    ports = tuple(
        sorted(
            (str(b.get("HostIp", "")), int(key.split("/")[0]), int(b.get("HostPort") or 0))
            for key, bindings in published.items()
            for b in bindings or ()
        )
    )
    state = str((attrs.get("State") or {}).get("Status", ""))
    return (state, ports, (attrs.get("Config") or {}).get("Image"), attrs.get("Image"))


def _state_of(status: str) -> InstanceState:
    if status == "created":
        return InstanceState.CREATED
    if status in ("running", "restarting", "paused"):
        return InstanceState.RUNNING
    if status in ("exited", "dead", "removing"):
        return InstanceState.EXITED
    return InstanceState.UNKNOWN


class DockerRuntime:
    """The :class:`~gitorch.runtime.base.Runtime` of one node backed by a Docker engine.

    ``endpoint`` is ``unix://``, ``tcp://`` (TLS with ``access.tls``) or ``ssh://``
    (paramiko, with ``access``'s key and known hosts: :mod:`._ssh`). ``address`` is the
    host IP ports are published on and where clients reach them. ``timeout`` bounds every
    engine call; ``probe_timeout`` the health check of :meth:`node_info` (a ping and the
    engine's facts), so a host cut off the network is NotReady within it, not after a
    whole call's timeout. ``pull`` allows pulling images that are missing on the node (a
    failing pull reports :class:`ImageNotFound`). ``state_dir`` is where the output of
    removed containers is kept (none: not kept). Every failure to reach the engine names
    the node (:func:`_engine_error`).
    """

    driver = "docker"

    def __init__(
        self,
        node_name: str,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        address: str = "127.0.0.1",
        timeout: float = 10.0,
        probe_timeout: float = 3.0,
        tls: DockerTLS | None = None,
        access: EngineAccess | None = None,
        pull: bool = True,
        state_dir: Path | None = None,
        allowed_host_paths: tuple[Path, ...] = (),
    ) -> None:
        self.allowed_host_paths = tuple(allowed_host_paths)
        self.node_name = node_name
        self.endpoint = endpoint
        self.address = address
        self.timeout = timeout
        self.probe_timeout = min(timeout, probe_timeout)
        self.access = access if access is not None else (tls.access() if tls else EngineAccess())
        self.pull = pull
        self._retained = RetainedStore(Path(state_dir)) if state_dir is not None else None
        self._client: docker.APIClient | None = None
        self._probe_client: docker.APIClient | None = None
        self._facts: tuple[float, dict[str, Any]] | None = None  # (when, docker info)
        self._checking = threading.Lock()  # node_info: one check at a time
        self._silent: tuple[float, NodeInfo] | None = None  # a check that timed out, when
        self._oom_killed: set[str] = set()  # exited containers whose oom event was seen
        self._exit_watcher: _ExitWatcher | None = None  # on_exit's reader of the events
        # Containers this runtime saw exit in stop(), until removed: the engine keeps their
        # published ports (docker-proxy accepts connections) until its clean-up is done,
        # so a port probe could still find one "open" (see probe()).
        self._stopped: set[str] = set()
        self._publish_on: str | None = None  # _publish_address(), once known
        # list_instances' running containers as last inspected: id -> (the listing's
        # key, when inspected, the Instance); see INSPECT_KEPT_FOR.
        self._inspected: dict[str, tuple[tuple[Any, ...], float, Instance]] = {}
        # Containers whose die event came since they were last inspected.
        self._died: set[str] = set()
        self._lock = threading.Lock()
        # Over ssh every call is a session of one ssh connection, and sshd refuses more
        # than MaxSessions (10 by default) at once: calls wait for a free one instead.
        self._sessions: threading.BoundedSemaphore | nullcontext[None] = (
            threading.BoundedSemaphore(SSH_SESSIONS)
            if endpoint.startswith("ssh://")
            else nullcontext()
        )

    def _publish_address(self, api: docker.APIClient) -> str:
        """Where replicas' ports are published: ``address``, except that the default
        loopback address of an engine on this host becomes the engine's bridge gateway
        when this host owns that address. Traffic from this host to the gateway reaches
        the container through the kernel's NAT; on 127.0.0.1 every byte went through a
        ``docker-proxy`` process (Docker's userland proxy: ~22% of a core at ~600
        requests/s in bench/README.md's measure, ~20% fewer requests a second). The
        gateway is no more exposed than the containers on the bridge already are."""
        known = self._publish_on
        if known is not None:
            return known
        chosen = self.address
        if self.address in ("127.0.0.1", "localhost") and self.endpoint.startswith("unix://"):
            gateway = _bridge_gateway(api)
            if gateway is not None and _owned_here(gateway):
                chosen = gateway
        self._publish_on = chosen
        return chosen

    @property
    def transport(self) -> str:
        """How the engine is reached, in words (``gitorch nodes``' TLS column)."""
        if self.endpoint.startswith("ssh://"):
            return "ssh"
        if self.endpoint.startswith("unix://"):
            return "unix socket"
        if not self.access.tls:
            return "tcp (no TLS)"
        if self.access.problem:
            return "tls (not set up)"
        return "tls (verified)" if self.access.verify else "tls (not verified)"

    def on_exit(self, listener: Callable[[str], None] | None) -> None:
        """Call ``listener(container_id)`` (on a thread of its own) when a gitorch
        container on this engine dies: the engine's events stream is read, so the daemon
        passes at once instead of at its next resync (the process driver's reaper does
        the same for its children). A container gitorch stops itself wakes it too (a
        pass more during a rollout, which passes often anyway). ``None`` stops reading."""
        with self._lock:
            watcher, self._exit_watcher = self._exit_watcher, None
            if listener is not None:
                self._exit_watcher = _ExitWatcher(self, listener)
        if watcher is not None:
            watcher.stop()
        if self._exit_watcher is not None:
            self._exit_watcher.start()

    # -- plumbing -------------------------------------------------------------------------

    def _api(self) -> docker.APIClient:
        with self._lock:
            if self._client is None:
                self._client = _build_client(
                    self.endpoint, self.timeout, self.access, node=self.node_name
                )
            return self._client

    def _probe_api(self) -> docker.APIClient:
        with self._lock:
            if self._probe_client is None:
                self._probe_client = _build_client(
                    self.endpoint, self.probe_timeout, self.access, node=self.node_name
                )
            return self._probe_client

    def _drop_client(self) -> None:
        with self._lock:
            for client in (self._client, self._probe_client):
                if client is not None:
                    with suppress(Exception):
                        client.close()
            self._client = None
            self._probe_client = None

    @contextmanager
    def _translate(self, instance_id: str | None = None) -> Iterator[None]:
        """Turn SDK and transport errors into gitorch's tree at this one boundary."""
        try:
            yield
        except GitorchError:
            raise
        except docker.errors.NotFound as exc:
            if instance_id is not None:
                raise InstanceNotFound(
                    f"no instance {instance_id} on node {self.node_name}"
                ) from exc
            raise RuntimeDriverError(f"Docker: {exc.explanation or exc}") from exc
        except docker.errors.APIError as exc:
            raise RuntimeDriverError(f"Docker engine error: {exc.explanation or exc}") from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            # The connection pool may hold sockets to a dead engine: start afresh next time.
            self._drop_client()
            raise _engine_error(self.node_name, self.endpoint, exc) from exc
        except (docker.errors.DockerException, paramiko.SSHException, EOFError) as exc:
            # EOFError: paramiko's ssh transport ended under the call.
            self._drop_client()
            raise _engine_error(self.node_name, self.endpoint, exc) from exc

    def _call(self, fn: Callable[[docker.APIClient], _T], instance_id: str | None = None) -> _T:
        with self._sessions, self._translate(instance_id):
            return fn(self._api())

    # -- Runtime protocol -----------------------------------------------------------------

    def node_info(self) -> NodeInfo:
        """A ping (its round trip is ``rtt_ms``) and the engine's facts (version, NCPU,
        MemTotal; asked again every :data:`FACTS_EVERY` seconds), each bounded by
        ``probe_timeout``; ready=False with the reason, naming the node, if it fails.

        One check at a time: a caller that comes while one is under way (a status beside
        a pass) waits for it. A check that waited out its timeout (a host cut off) is the
        answer for ``probe_timeout`` seconds after it, to those callers and to the passes
        and statuses of those seconds, which do not wait it out again (a refusal, which
        costs nothing, is not kept)."""
        with self._checking:
            silent = self._silent
            if silent is not None and time.monotonic() - silent[0] < self.probe_timeout:
                return silent[1]
            started = time.monotonic()
            info = self._check_node()
            waited = time.monotonic() - started >= self.probe_timeout / 2
            self._silent = (time.monotonic(), info) if not info.ready and waited else None
            return info

    def _check_node(self) -> NodeInfo:
        try:
            with self._translate():
                api = self._probe_api()
                started = time.monotonic()
                api.ping()
                rtt = (time.monotonic() - started) * 1000
                facts = self._facts
                if facts is None or time.monotonic() - facts[0] > FACTS_EVERY:
                    facts = (time.monotonic(), api.info())
                    self._facts = facts
        except RuntimeDriverError as exc:
            self._facts = None
            return NodeInfo(
                name=self.node_name,
                driver=self.driver,
                ready=False,
                cpu_cores=0.0,
                memory_bytes=0,
                address=self.address,
                message=exc.message,
                transport=self.transport,
            )
        info = facts[1]
        version = str(info.get("ServerVersion") or "?")
        return NodeInfo(
            name=self.node_name,
            driver=self.driver,
            ready=True,
            cpu_cores=float(info.get("NCPU") or 0),
            memory_bytes=int(info.get("MemTotal") or 0),
            address=self.address,
            message=f"Docker {version}",
            limits=_limits_line(info),
            version=version,
            transport=self.transport,
            rtt_ms=rtt,
        )

    def list_instances(self, cluster: str) -> list[Instance]:
        """Containers labelled with ``cluster`` and this node, running or not.

        One listing; a container is inspected only when the listing does not vouch for
        what was inspected before: not running, not seen running, listed with other
        ports or image, its ``die`` seen since (a ``docker restart`` between two
        listings), or inspected more than :data:`INSPECT_KEPT_FOR` ago."""
        filters = {"label": [f"{LABEL_CLUSTER}={cluster}", f"{LABEL_NODE}={self.node_name}"]}
        summaries = self._call(lambda api: api.containers(all=True, filters=filters))
        found: list[Instance] = []
        kept: dict[str, tuple[tuple[Any, ...], float, Instance]] = {}
        now = time.monotonic()
        with self._lock:
            known, died = self._inspected, set(self._died)
            self._died.clear()
        for summary in summaries:
            container_id = str(summary["Id"])
            key = _listing_key(summary)
            entry = known.get(container_id)
            if (
                entry is None
                or entry[0] != key
                or container_id in died
                or now - entry[1] > INSPECT_KEPT_FOR
            ):
                try:
                    instance = self.inspect(container_id)
                except InstanceNotFound:
                    continue  # removed between the listing and the inspect
                entry = (key, now, instance)
            if key[0] == "running" and entry[2].state is InstanceState.RUNNING:
                kept[container_id] = entry
            found.append(entry[2])
        with self._lock:
            # A die event that came meanwhile is for the next listing.
            self._inspected = {k: v for k, v in kept.items() if k not in self._died}
        found.sort(key=lambda inst: inst.name)
        return found

    def _forget_inspected(self) -> None:
        """The next listing inspects every container (the die events were lost)."""
        with self._lock:
            self._inspected = {}

    def _exited(self, container_id: str) -> None:
        """The engine said the container died: the next listing inspects it again."""
        with self._lock:
            self._died.add(container_id)

    def create(self, spec: ReplicaSpec, cluster: str) -> Instance:
        """Create and start a container for ``spec``; return it as the engine reports it."""
        if not spec.image:
            raise ReplicaStartFailed(f"replica {spec.name}: the docker driver needs an image")
        image = spec.image
        labels = dict(spec.labels)
        labels[LABEL_CLUSTER] = cluster
        labels[LABEL_NODE] = self.node_name
        if spec.ports:
            labels[LABEL_PORTS] = _encode_ports(spec)
        env = dict(spec.env)
        env.update(_port_env(spec))
        env.update({volume_env_name(m.name): m.target for m in spec.mounts})
        name = _container_name(spec.name)
        mounts = self._replica_mounts(spec, cluster)
        binds = self._secret_binds(spec, name)
        if binds:
            env[SECRETS_DIR_ENV] = CONTAINER_SECRETS_DIR
        # Env secrets are in the container's config (docker inspect shows them): what
        # env delivery means. Files are not (binds name a path on tmpfs).
        env.update(spec.secret_env)

        publish_on = self.address

        def do_create(api: docker.APIClient) -> str:
            nonlocal publish_on
            publish_on = self._publish_address(api) if spec.ports else self.address
            host_config = api.create_host_config(
                binds=binds or None,
                port_bindings={
                    f"{p.container_port}/{p.protocol}": (publish_on, p.host_port)
                    for p in spec.ports
                },
                restart_policy={"Name": "no"},
                init=True,
                mounts=mounts or None,
                extra_hosts=dict(spec.extra_hosts) or None,
                nano_cpus=int(spec.cpu_limit * 1e9) if spec.cpu_limit else None,
                mem_limit=spec.memory_limit or None,
                # No swap beyond the limit: the memory limit is a real ceiling.
                memswap_limit=spec.memory_limit or None,
            )
            created = api.create_container(
                image=spec.image,
                name=name,
                entrypoint=list(spec.command) or None,
                command=list(spec.args) or None,
                environment=env,
                working_dir=spec.working_dir,
                labels=labels,
                # A plain `docker stop` or an engine shutdown also honours the grace period.
                stop_timeout=max(0, math.ceil(spec.stop_grace_seconds)),
                ports=[(p.container_port, p.protocol) for p in spec.ports],
                host_config=host_config,
                detach=True,
            )
            return str(created["Id"])

        try:
            try:
                container_id = self._call(do_create)
            except RuntimeDriverError as exc:
                # The image is asked for only when the engine does not have it (an
                # inspect before every create was one more round trip per replica).
                if not isinstance(exc.__cause__, docker.errors.ImageNotFound):
                    raise
                self._ensure_image(image)
                container_id = self._call(do_create)
        except RuntimeDriverError as exc:
            _secret_files.remove_files(name)
            if "Conflict" in str(exc.__cause__) or "already in use" in exc.message:
                raise ReplicaStartFailed(
                    f"replica {spec.name}: a container named {name} already exists on "
                    f"node {self.node_name}"
                ) from exc
            if type(exc) is RuntimeDriverError:
                raise ReplicaStartFailed(f"replica {spec.name}: {exc.message}") from exc
            raise
        try:
            self._call(lambda api: api.start(container_id), container_id)
        except RuntimeDriverError as exc:
            self._remove_quietly(container_id)
            _secret_files.remove_files(name)
            if any(pat in exc.message for pat in _PORT_TAKEN_PATTERNS):
                raise PortInUse(
                    f"replica {spec.name}: a host port on {publish_on} is already taken "
                    f"({exc.message})"
                ) from exc
            if type(exc) is RuntimeDriverError:
                raise ReplicaStartFailed(f"replica {spec.name}: {exc.message}") from exc
            raise
        attrs = self._call(lambda api: api.inspect_container(container_id), container_id)
        instance = self._to_instance(attrs)
        if instance.state is InstanceState.RUNNING:
            # The next listing needs no inspect of it (list_instances).
            with self._lock:
                if container_id not in self._died:
                    self._inspected[container_id] = (
                        _inspected_key(attrs),
                        time.monotonic(),
                        instance,
                    )
        return instance

    def stop(self, instance_id: str, grace_seconds: float) -> None:
        """The image's stop signal (SIGTERM unless it says otherwise), up to
        ``grace_seconds`` for the exit, then SIGKILL. Stopping a stopped one is fine.

        Returns as soon as the container's process has exited (the engine's ``die``
        event), not when the engine has also finished its clean-up after the exit
        (network, port proxies, mounts: up to a second on a busy host), which is when
        ``docker stop`` returns. :meth:`remove` waits for that clean-up, and the executor
        starts the next replicas meanwhile (issue 20's rolling update). Over ssh, or when
        the engine's event stream is lost, the engine's own stop does it all."""
        if self.endpoint.startswith("ssh://"):  # docker-py cannot cancel a stream over ssh
            self._exited(instance_id)
            self._engine_stop(instance_id, grace_seconds)
            return
        watch = _ExitWatch(self, instance_id)
        self._stopped.add(instance_id)
        # The engine's listing may say running for a moment after the die event: the
        # next listing inspects it (list_instances).
        self._exited(instance_id)
        try:
            if not watch.subscribed(self.timeout):
                self._engine_stop(instance_id, grace_seconds)  # bounded by the timeout
                return
            attrs = self._call(lambda api: api.inspect_container(instance_id), instance_id)
            state = attrs.get("State") or {}
            if not state.get("Running"):
                return
            if state.get("Paused") or state.get("Restarting"):
                self._engine_stop(instance_id, grace_seconds)
                return
            if grace_seconds > 0:
                signal_name = str((attrs.get("Config") or {}).get("StopSignal") or "SIGTERM")
                begun = time.monotonic()
                self._signal(instance_id, signal_name)
                exited = watch.exited(grace_seconds)
                if exited is None:  # the stream ended: the engine's stop, with what is left
                    left = grace_seconds - (time.monotonic() - begun)
                    self._engine_stop(instance_id, max(0.0, left))
                    return
                if exited:
                    return
            self._signal(instance_id, "SIGKILL")
            if not watch.exited(self.timeout):
                self._call(
                    lambda api: api.wait(
                        instance_id, timeout=self.timeout, condition="not-running"
                    ),
                    instance_id,
                )
        finally:
            self._exited(instance_id)  # a listing during the stop kept it running
            watch.close()

    def _engine_stop(self, instance_id: str, grace_seconds: float) -> None:
        """``docker stop``: the engine signals, waits, kills and cleans up, then answers."""
        # The API takes whole seconds; round up so a replica never gets less than its grace.
        grace = max(0, math.ceil(grace_seconds))
        # docker-py extends the socket timeout of this request by the grace itself.
        self._call(lambda api: api.stop(instance_id, timeout=grace), instance_id)

    def _signal(self, instance_id: str, signal_name: str) -> None:
        """Send a signal; one that exited meanwhile is fine (its ``die`` is on the way)."""
        try:
            self._call(lambda api: api.kill(instance_id, signal=signal_name), instance_id)
        except RuntimeDriverError as exc:
            if type(exc) is not RuntimeDriverError or "is not running" not in exc.message:
                raise

    def remove(self, instance_id: str) -> None:
        """Remove the container (killing it first if it still runs) and its anonymous
        volumes, keeping its last output and exit facts when the runtime has a state dir."""
        attrs: Mapping[str, Any] | None = None
        if self._retained is not None:
            attrs = self._retain(instance_id, self._retained)
        if attrs is None:
            with suppress(RuntimeDriverError):
                attrs = self._call(lambda api: api.inspect_container(instance_id), instance_id)
        name = (str(attrs.get("Name") or "").lstrip("/") or None) if attrs else None
        self._call(lambda api: api.remove_container(instance_id, v=True, force=True), instance_id)
        self._stopped.discard(instance_id)
        if name is not None:
            _secret_files.remove_files(name)

    def _secret_binds(self, spec: ReplicaSpec, name: str) -> dict[str, dict[str, str]]:
        """Read-only binds of the replica's secret files, written on this host's tmpfs."""
        if not spec.secret_files:
            return {}
        if not self.endpoint.startswith("unix://"):
            raise ReplicaStartFailed(
                f"replica {spec.name}: secret files need the Docker engine on this host "
                f"(a unix:// endpoint); node {self.node_name}'s is {self.endpoint}"
            )
        # 0444 in a 0700 folder: readable by the container's user, whoever it is, and by
        # no other user of this host.
        folder = _secret_files.write_files(name, spec.secret_files, 0o444)
        return {
            str(folder / file): {"bind": f"{CONTAINER_SECRETS_DIR}/{file}", "mode": "ro"}
            for file in spec.secret_files
        }

    def _retain(self, instance_id: str, store: RetainedStore) -> Mapping[str, Any]:
        """Keep the container's last output and exit facts; its inspection (which
        :meth:`remove` reads the name from: one engine call less per removal)."""
        attrs = self._call(lambda api: api.inspect_container(instance_id), instance_id)
        labels = (attrs.get("Config") or {}).get("Labels") or {}
        cluster, service = labels.get(LABEL_CLUSTER), labels.get(LABEL_SERVICE)
        if not cluster or not service:
            return attrs
        if _state_of(str((attrs.get("State") or {}).get("Status", ""))) is InstanceState.RUNNING:
            # As the process driver does: the replica dies by SIGKILL, and says so.
            with suppress(RuntimeDriverError):
                self._call(lambda api: api.kill(instance_id), instance_id)
                self._call(lambda api: api.wait(instance_id, timeout=self.timeout), instance_id)
                attrs = self._call(lambda api: api.inspect_container(instance_id), instance_id)
        try:
            raw = self._call(
                lambda api: api.logs(instance_id, stdout=True, stderr=True, tail=_RETAIN_LINES),
                instance_id,
            )
        except RuntimeDriverError as exc:
            log.warning("node %s: cannot read the logs of %s: %s", self.node_name, instance_id, exc)
            raw = b""
        output, truncated = tail_bytes(raw if isinstance(raw, bytes) else str(raw).encode())
        instance = self._to_instance(attrs)
        state = attrs.get("State") or {}
        entry = RetainedLog(
            name=instance.name,
            replica=labels.get(LABEL_REPLICA, instance.name),
            service=service,
            node=self.node_name,
            instance_id=instance.id,
            revision=labels.get(LABEL_REVISION),
            exit_code=instance.exit_code,
            exit_reason=instance.exit_reason,
            started_at=instance.started_at,
            finished_at=_parse_time(state.get("FinishedAt")),
            removed_at=time.time(),
            output=output,
            truncated=truncated,
        )
        try:
            store.keep(cluster, entry)
        except OSError as exc:  # the container goes anyway: losing its tail is the lesser harm
            log.warning(
                "node %s: cannot keep the output of %s: %s", self.node_name, entry.name, exc
            )
        return attrs

    def retained_logs(self, cluster: str, service: str) -> list[RetainedLog]:
        """The last removed containers of ``service`` on this node, newest first."""
        return self._retained.list(cluster, service) if self._retained is not None else []

    def inspect(self, instance_id: str) -> Instance:
        """The container as the engine sees it now."""
        attrs = self._call(lambda api: api.inspect_container(instance_id), instance_id)
        return self._to_instance(attrs)

    def logs(self, instance_id: str, tail: int = 100) -> str:
        """The last ``tail`` lines of stdout and stderr, interleaved as written."""
        raw = self._call(
            lambda api: api.logs(instance_id, stdout=True, stderr=True, tail=tail, stream=False),
            instance_id,
        )
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)

    def follow_logs(
        self, instance_id: str, tail: int = 100, stop: threading.Event | None = None
    ) -> Iterator[str]:
        """The last ``tail`` lines, then each new line until the container stops or
        ``stop`` is set.

        The stream has a client of its own without a read timeout (a quiet container
        writes nothing for as long as it likes); it is closed with the iterator, or by a
        watcher thread as soon as ``stop`` is set (docker's stream may be closed from
        another thread: its socket is shut down, and the blocked read ends).
        """
        self.inspect(instance_id)  # InstanceNotFound now, not at the first next()
        return self._follow(instance_id, tail, stop)

    def _follow(self, instance_id: str, tail: int, stop: threading.Event | None) -> Iterator[str]:
        client = _build_client(self.endpoint, None, self.access, node=self.node_name)
        stream: Any = None
        ended = threading.Event()
        try:
            with self._translate(instance_id):
                stream = client.logs(
                    instance_id, stdout=True, stderr=True, stream=True, follow=True, tail=tail
                )
                if stop is not None:
                    _close_when_set(stop, ended, stream, f"gitorch-logs-{instance_id[:12]}")
                pending = b""
                for chunk in stream:
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        yield line.decode("utf-8", "replace")
                    if stop is not None and stop.is_set():
                        return
                if pending and not (stop is not None and stop.is_set()):
                    yield pending.decode("utf-8", "replace")
        finally:
            ended.set()
            if stream is not None and hasattr(stream, "close"):
                with suppress(Exception):
                    stream.close()
            client.close()

    def usage(self, instance_id: str) -> ResourceUsage:
        """CPU (% of one core, over the engine's sample interval) and memory in use."""
        stats: dict[str, Any] = self._call(
            lambda api: api.stats(instance_id, stream=False), instance_id
        )
        return _usage_from_stats(stats)

    def probe(self, instance: Instance, probe: Probe) -> ProbeResult:
        """Run one probe; failures are results, only a dead engine (exec) raises."""
        started = time.monotonic()
        if instance.id in self._stopped:
            # Right after stop() the engine may still hold its ports (it cleans up after
            # the exit): an open port would not be the replica's.
            ok, message = False, "stopped"
        elif probe.exec_command:
            ok, message = self._exec_probe(instance.id, probe)
        elif probe.port is None:
            ok, message = False, "probe has no port"
        else:
            target = self._probe_target(instance, probe.port)
            if target is None:
                ok, message = False, f"container port {probe.port} is not published"
            elif probe.http_path is not None:
                ok, message = http_check(*target, probe.http_path, probe.timeout_seconds)
            else:
                ok, message = tcp_check(*target, probe.timeout_seconds)
        return ProbeResult(ok=ok, message=message, duration_seconds=time.monotonic() - started)

    # -- volumes --------------------------------------------------------------------------

    def _volume_name(self, cluster: str, name: str) -> str:
        return _container_name(f"{cluster}_{self.node_name}_{name}")

    def create_volume(self, spec: VolumeSpec, cluster: str) -> VolumeInfo:
        """The named volume of ``spec`` on this engine: made, or adopted with its data."""
        name = self._volume_name(cluster, spec.name)
        labels = {LABEL_CLUSTER: cluster, LABEL_NODE: self.node_name, LABEL_VOLUME: spec.name}
        if spec.size_bytes is not None:
            labels[LABEL_SIZE] = str(spec.size_bytes)
        driver, options = spec.driver or "local", dict(spec.driver_opts)
        if spec.host_path is not None:
            device = self._host_directory(spec)
            labels[LABEL_HOST_PATH] = device
            driver, options = "local", {"type": "none", "o": "bind", "device": device}
        try:
            return self._volume_info(self._call(lambda api: api.inspect_volume(name), name))
        except InstanceNotFound:
            pass
        try:
            made = self._call(
                lambda api: api.create_volume(
                    name, driver=driver, driver_opts=options or None, labels=labels
                )
            )
        except EngineUnavailable:
            raise
        except RuntimeDriverError as exc:
            raise VolumeError(
                f"volume {spec.name}: cannot make it on node {self.node_name}: {exc.message}"
            ) from exc
        return self._volume_info(made)

    def _host_directory(self, spec: VolumeSpec) -> str:
        """A hostPath on an engine of this very host (a unix socket): resolved, checked
        against the allowed directories and made if missing. A remote engine's host is
        not ours to look at: the path as validated (by name) against the same list."""
        assert spec.host_path is not None
        if not self.endpoint.startswith("unix://"):
            return spec.host_path
        path = check_host_path(spec.host_path, self.allowed_host_paths)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VolumeError(f"volume {spec.name}: cannot make {path}: {exc}") from exc
        return str(path)

    def list_volumes(self, cluster: str) -> list[VolumeInfo]:
        """The named volumes of ``cluster`` on this node."""
        filters = {"label": [f"{LABEL_CLUSTER}={cluster}", f"{LABEL_NODE}={self.node_name}"]}
        found = self._call(lambda api: api.volumes(filters=filters)) or {}
        infos = [self._volume_info(v) for v in found.get("Volumes") or []]
        if self.endpoint.startswith("unix://"):
            # A hostPath whose directory was removed by hand is gone, whatever Docker keeps.
            infos = [v for v in infos if v.host_path is None or Path(v.host_path).is_dir()]
        return sorted(infos, key=lambda v: v.name)

    def remove_volume(self, name: str, cluster: str) -> None:
        """Remove the named volume (a hostPath's directory stays); fine when gone."""
        handle = self._volume_name(cluster, name)
        try:
            self._call(lambda api: api.remove_volume(handle), handle)
        except InstanceNotFound:
            return
        except EngineUnavailable:
            raise
        except RuntimeDriverError as exc:
            raise VolumeError(
                f"volume {name}: cannot remove it from node {self.node_name}: {exc.message}"
            ) from exc

    def _volume_info(self, attrs: Mapping[str, Any]) -> VolumeInfo:
        labels = attrs.get("Labels") or {}
        size = labels.get(LABEL_SIZE)
        return VolumeInfo(
            name=labels.get(LABEL_VOLUME, str(attrs.get("Name", ""))),
            node=self.node_name,
            handle=str(attrs.get("Name", "")),
            size_bytes=int(size) if size and size.isdigit() else None,
            created_at=_parse_time(attrs.get("CreatedAt")),
            host_path=labels.get(LABEL_HOST_PATH),
        )

    def _replica_mounts(self, spec: ReplicaSpec, cluster: str) -> list[docker.types.Mount]:
        """The mounts of a replica, each volume checked first: Docker makes a missing
        named volume silently (empty), and a replica must never get one."""
        mounts: list[docker.types.Mount] = []
        for mount in spec.mounts:
            handle = self._volume_name(cluster, mount.volume.name)
            if not self._volume_exists(handle):
                raise ReplicaStartFailed(
                    f"replica {spec.name}: volume {mount.volume.name} is not on node "
                    f"{self.node_name}"
                )
            mounts.append(
                docker.types.Mount(
                    target=mount.target, source=handle, type="volume", read_only=mount.read_only
                )
            )
        return mounts

    def _volume_exists(self, handle: str) -> bool:
        try:
            self._call(lambda api: api.inspect_volume(handle), handle)
        except InstanceNotFound:
            return False
        return True

    # -- the host's ingress ----------------------------------------------------------------

    def _ingress_name(self, cluster: str) -> str:
        return _container_name(f"{cluster}-ingress-{self.node_name}")

    def ingress(self, cluster: str) -> IngressState | None:
        """The ingress container of ``cluster`` on this node, if there is one."""
        filters = {"label": [f"{LABEL_INGRESS}={cluster}", f"{LABEL_NODE}={self.node_name}"]}
        found = self._call(lambda api: api.containers(all=True, filters=filters))
        if not found:
            return None
        summary = found[0]
        attrs = self._call(lambda api: api.inspect_container(summary["Id"]), summary["Id"])
        state = attrs.get("State") or {}
        return IngressState(
            id=str(attrs["Id"]),
            image=str((attrs.get("Config") or {}).get("Image", "")),
            running=bool(state.get("Running")),
            status=str(state.get("Status", "")),
            started_at=_parse_time(state.get("StartedAt")),
        )

    def ensure_image(self, tag: str, tar: str) -> None:
        """Load ``tar`` (a root filesystem) as image ``tag`` unless the engine has it."""
        try:
            self._call(lambda api: api.inspect_image(tag))
            return
        except RuntimeDriverError as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                raise
        log.info("node %s: loading the ingress image %s", self.node_name, tag)
        repository, _, version = tag.partition(":")
        # Loading takes longer than a call: the engine unpacks tens of megabytes.
        client = _build_client(
            self.endpoint, max(self.timeout, 300.0), self.access, node=self.node_name
        )
        try:
            with self._translate():
                client.import_image_from_file(tar, repository=repository, tag=version)
        finally:
            client.close()

    def start_ingress(self, cluster: str, spec: IngressSpec) -> IngressState:
        """Create and start the ingress: host networking (it listens on the host's
        address, and reaches replicas on every host), docker-init as PID 1, restarted by
        the engine if it dies or the engine restarts, its state in a named volume."""
        self.ensure_image(spec.image, spec.image_tar)
        name = self._ingress_name(cluster)
        self.remove_ingress(cluster, keep_state=True)
        volume = _container_name(f"{cluster}-ingress")
        labels = {LABEL_INGRESS: cluster, LABEL_NODE: self.node_name}
        if not self._volume_exists(volume):
            self._call(lambda api: api.create_volume(volume, labels=labels))

        def do_create(api: docker.APIClient) -> str:
            host_config = api.create_host_config(
                network_mode="host",
                init=True,
                restart_policy={"Name": "unless-stopped"},
                mounts=[docker.types.Mount(target=spec.state_dir, source=volume, type="volume")],
            )
            created = api.create_container(
                image=spec.image,
                name=name,
                command=list(spec.command),
                environment=dict(spec.env),
                labels=labels,
                host_config=host_config,
                detach=True,
            )
            return str(created["Id"])

        container_id = self._call(do_create)
        try:
            self._call(lambda api: api.start(container_id), container_id)
        except RuntimeDriverError:
            self._remove_quietly(container_id)
            raise
        state = self.ingress(cluster)
        if state is None:
            raise RuntimeDriverError(f"node {self.node_name}: the ingress vanished at its start")
        return state

    def remove_ingress(self, cluster: str, *, keep_state: bool = False) -> None:
        """Stop the ingress (it drains open connections, within 10 s) and remove it, and
        its state volume unless ``keep_state``."""
        filters = {"label": [f"{LABEL_INGRESS}={cluster}", f"{LABEL_NODE}={self.node_name}"]}
        for summary in self._call(lambda api: api.containers(all=True, filters=filters)):
            self._stop_and_remove(str(summary["Id"]))
        if not keep_state:
            volume = _container_name(f"{cluster}-ingress")
            with suppress(InstanceNotFound):
                self._call(lambda api: api.remove_volume(volume), volume)

    def _stop_and_remove(self, container_id: str) -> None:
        with suppress(InstanceNotFound):
            self._call(lambda api: api.stop(container_id, timeout=10), container_id)
            self._call(lambda api: api.remove_container(container_id, force=True), container_id)

    def ingress_channel(self, cluster: str, command: tuple[str, ...]) -> ExecChannel:
        """``command`` run in the ingress, its stdin and stdout kept open as a channel."""
        state = self.ingress(cluster)
        if state is None or not state.running:
            raise EngineUnavailable(f"node {self.node_name}: no ingress runs")
        exec_id = self._call(
            lambda api: api.exec_create(
                state.id, list(command), stdin=True, stdout=True, stderr=True, tty=False
            )["Id"],
            state.id,
        )
        sock = self._call(lambda api: api.exec_start(exec_id, socket=True), state.id)
        # Requests are answered in milliseconds (a table applied, figures read): this
        # bounds how long a reader waits on a host that went silent under it.
        return ExecChannel(
            sock, INGRESS_CALL_TIMEOUT, self.node_name, first_timeout=INGRESS_FIRST_CALL_TIMEOUT
        )

    # -- helpers --------------------------------------------------------------------------

    def _ensure_image(self, image: str) -> None:
        try:
            self._call(lambda api: api.inspect_image(image))
            return
        except RuntimeDriverError as exc:
            if not isinstance(exc.__cause__, docker.errors.NotFound):
                raise
        if not self.pull:
            raise ImageNotFound(f"image {image} is not on node {self.node_name} (pull disabled)")
        try:
            self._call(lambda api: api.pull(image))
        except EngineUnavailable as exc:
            if not isinstance(exc.__cause__, requests.exceptions.Timeout):
                raise
            raise ImageNotFound(
                f"image {image} is not on node {self.node_name} and pulling it timed out"
            ) from exc
        except RuntimeDriverError as exc:
            raise ImageNotFound(
                f"image {image} is not on node {self.node_name} and cannot be pulled: {exc.message}"
            ) from exc

    def _remove_quietly(self, container_id: str) -> None:
        # The original failure is what the caller must see, not a cleanup error.
        with suppress(RuntimeDriverError):
            self.remove(container_id)

    def _probe_target(self, instance: Instance, container_port: int) -> tuple[str, int] | None:
        for binding in instance.ports:
            if binding.container_port == container_port:
                # A wildcard bind is reached on loopback from this host.
                host = binding.host_ip if binding.host_ip not in ("", "0.0.0.0") else "127.0.0.1"
                return host, binding.host_port
        return None

    def _exec_probe(self, instance_id: str, probe: Probe) -> tuple[bool, str]:
        """exec in the container; the SDK's exec_run has no timeout, so poll the exec."""
        try:
            exec_id = self._call(
                lambda api: api.exec_create(instance_id, list(probe.exec_command))["Id"],
                instance_id,
            )
            self._call(lambda api: api.exec_start(exec_id, detach=True), instance_id)
            deadline = time.monotonic() + probe.timeout_seconds
            delay = 0.01
            while True:
                state = self._call(lambda api: api.exec_inspect(exec_id), instance_id)
                if not state.get("Running") and state.get("ExitCode") is not None:
                    code = int(state["ExitCode"])
                    return code == 0, f"exit {code}"
                if time.monotonic() >= deadline:
                    # Docker cannot cancel an exec; it is left to finish on its own.
                    return False, f"timed out after {probe.timeout_seconds:g}s"
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        except InstanceNotFound:
            return False, "container is gone"
        except EngineUnavailable:
            raise
        except RuntimeDriverError as exc:
            # e.g. "container is not running" or the command does not exist.
            return False, exc.message

    def _to_instance(self, attrs: Mapping[str, Any]) -> Instance:
        config = attrs.get("Config") or {}
        state = attrs.get("State") or {}
        labels = dict(config.get("Labels") or {})
        status = _state_of(str(state.get("Status", "")))
        port_names = _decode_ports(labels.get(LABEL_PORTS, ""))
        bindings: list[PortBinding] = []
        published = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
        for port_key, name in port_names.items():
            for host in published.get(port_key) or []:
                bindings.append(
                    PortBinding(
                        name=name,
                        container_port=int(port_key.split("/")[0]),
                        host_ip=host.get("HostIp") or self.address,
                        host_port=int(host["HostPort"]),
                    )
                )
                break  # one binding per port: the one on `address`
        return Instance(
            id=str(attrs["Id"]),
            name=str(attrs.get("Name", "")).lstrip("/"),
            node=labels.get(LABEL_NODE, self.node_name),
            state=status,
            labels=labels,
            ports=tuple(bindings),
            exit_code=int(state.get("ExitCode", 0)) if status is InstanceState.EXITED else None,
            restarts=int(attrs.get("RestartCount") or 0),
            started_at=_parse_time(state.get("StartedAt")),
            image=config.get("Image"),
            exit_reason=(
                _exit_reason(state, self._oom_event_seen(attrs))
                if status is InstanceState.EXITED
                else None
            ),
            finished_at=(
                _parse_time(state.get("FinishedAt")) if status is InstanceState.EXITED else None
            ),
        )

    def _oom_event_seen(self, attrs: Mapping[str, Any]) -> bool:
        """Whether the engine logged an ``oom`` event for this exited container, asked only
        when the State flag may have been lost: SIGKILLed, under a memory limit, not
        flagged. A seen event is final and kept; an unseen one is asked again next time."""
        container_id = str(attrs.get("Id", ""))
        if container_id in self._oom_killed:
            return True
        state = attrs.get("State") or {}
        memory_limit = int((attrs.get("HostConfig") or {}).get("Memory") or 0)
        if state.get("OOMKilled") or memory_limit <= 0 or int(state.get("ExitCode") or 0) != 137:
            return False
        created = _parse_time(attrs.get("Created"))
        try:
            events = self._call(
                lambda api: list(
                    api.events(
                        since=int(created) if created else None,
                        until=int(time.time()) + 1,
                        filters={"container": container_id, "event": "oom"},
                        decode=True,
                    )
                ),
                container_id,
            )
        except RuntimeDriverError as exc:
            log.debug(
                "node %s: cannot read the events of %s: %s", self.node_name, container_id, exc
            )
            return False
        if events:
            self._oom_killed.add(container_id)
        return bool(events)


#: How long the events stream may stay silent before it is opened again (seconds): a
#: quiet engine costs one request per period; an engine gone silently is noticed.
EVENTS_IDLE_TIMEOUT = 300.0
#: The longest wait before opening the stream again after the engine failed (seconds).
EVENTS_RETRY_MAX = 30.0


class _ExitWatcher(threading.Thread):
    """Reads one engine's ``die`` events of gitorch's containers and tells ``listener``
    (see :meth:`DockerRuntime.on_exit`). A stream that breaks (the engine restarts, the
    network) is opened again from the last event's time, so no death in between is
    missed; a blocking read costs no CPU while nothing dies."""

    def __init__(self, runtime: DockerRuntime, listener: Callable[[str], None]) -> None:
        super().__init__(name=f"gitorch-docker-events-{runtime.node_name}", daemon=True)
        self.runtime = runtime
        self.listener = listener
        self._stopping = threading.Event()
        self._stream: Any = None

    def stop(self) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            with suppress(Exception):
                stream.close()  # unblocks the read

    def run(self) -> None:
        runtime = self.runtime
        since = int(time.time())
        retry = 1.0
        while not self._stopping.is_set():
            client = None
            try:
                client = _build_client(
                    runtime.endpoint, EVENTS_IDLE_TIMEOUT, runtime.access, node=runtime.node_name
                )
                self._stream = client.events(
                    since=since,
                    filters={
                        "type": "container",
                        "event": "die",
                        "label": [LABEL_CLUSTER, f"{LABEL_NODE}={runtime.node_name}"],
                    },
                    decode=True,
                )
                retry = 1.0
                for event in self._stream:
                    since = max(since, int(event.get("time") or since))
                    container = event.get("id") or (event.get("Actor") or {}).get("ID")
                    if container:
                        runtime._exited(str(container))
                    if container and not self._stopping.is_set():
                        self._tell(str(container))
            except Exception as exc:  # the engine went away, or a silent stream timed out
                # Deaths may go unseen until the stream is open again: inspect afresh.
                runtime._forget_inspected()
                if not self._stopping.is_set():
                    log.debug("node %s: the events stream broke: %s", runtime.node_name, exc)
            finally:
                self._stream = None
                if client is not None:
                    with suppress(Exception):
                        client.close()
            self._stopping.wait(retry)
            retry = min(retry * 2, EVENTS_RETRY_MAX)

    def _tell(self, container: str) -> None:
        try:
            self.listener(container)
        except Exception:  # a listener's bug must not stop the reading
            log.exception("node %s: the exit listener failed", self.runtime.node_name)


class _ExitWatch:
    """The engine's ``die`` events of one container, read on a thread of their own
    through a client of their own (closing a stream breaks its connection, which must
    not go back to the runtime's pool). Subscribed before the stop signal is sent, so
    the exit cannot be missed; :meth:`close` ends the stream and the thread."""

    def __init__(self, runtime: DockerRuntime, instance_id: str) -> None:
        self._runtime = runtime
        self._instance_id = instance_id
        self._ready = threading.Event()  # subscribed, or failed to
        self._settled = threading.Event()  # the exit seen, or the stream ended
        self._died = False
        self._closed = False
        self._stream: Any = None
        self._client: docker.APIClient | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._read, name=f"docker-exit-{instance_id[:12]}", daemon=True
        )
        self._thread.start()

    def _read(self) -> None:
        try:
            runtime = self._runtime
            version = runtime._api().api_version
            client = _build_client(
                runtime.endpoint, None, runtime.access, node=runtime.node_name, version=version
            )
            with self._lock:
                self._client = client
                if self._closed:
                    return
            stream = client.events(
                filters={"type": "container", "container": self._instance_id, "event": "die"},
                decode=True,
            )
            with self._lock:
                self._stream = stream
                closed = self._closed
            self._ready.set()
            if closed:
                return
            for event in stream:
                if event.get("status") == "die" or event.get("Action") == "die":
                    self._died = True
                    return
        except Exception as exc:  # the caller falls back to the engine's own stop
            log.debug("exit watch of %s ended: %r", self._instance_id, exc)
        finally:
            self._settled.set()
            self._ready.set()

    def subscribed(self, timeout: float) -> bool:
        """Whether the stream is open (within ``timeout``)."""
        self._ready.wait(timeout)
        with self._lock:
            return self._stream is not None and not self._settled.is_set()

    def exited(self, timeout: float) -> bool | None:
        """True once the container's ``die`` was seen (waiting up to ``timeout``); False
        when not yet; None when the stream ended without it (the engine went away)."""
        self._settled.wait(timeout)
        if self._died:
            return True
        return None if self._settled.is_set() else False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, client = self._stream, self._client
        if stream is not None:
            with suppress(Exception):
                stream.close()
        if client is not None:
            with suppress(Exception):
                client.close()
        # The reader ends at once when its socket is shut; not when the engine hangs
        # before answering the subscription (a daemon thread, gone with the engine).
        self._thread.join(timeout=1.0)


class ExecChannel:
    """The stdin and stdout of a Docker exec session (a hijacked connection to the
    engine: a unix, TLS or ssh stream). The engine multiplexes stdout and stderr in frames
    (8-byte headers); stderr is kept for messages. Reads have a timeout (the SDK's own
    socket reader polls without one): ``first_timeout`` until the first answer is read
    (the command is still starting), ``timeout`` after."""

    def __init__(
        self, sock: Any, timeout: float, node: str, *, first_timeout: float | None = None
    ) -> None:
        self._sock = sock
        self._node = node
        self._stdout = bytearray()
        self._stderr = bytearray()
        self.timeout = timeout
        self._started = first_timeout is None
        with suppress(Exception):
            sock.settimeout(timeout if first_timeout is None else first_timeout)

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._sock.recv(size - len(data))
            if not chunk:
                said = self._stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
                raise ConnectionError(
                    f"node {self._node}: the session ended"
                    + (f": {' '.join(said)}" if said else "")
                )
            data += chunk
        return data

    def receive(self, size: int) -> bytes:
        while len(self._stdout) < size:
            header = self._read(8)
            stream, length = header[0], int.from_bytes(header[4:8], "big")
            payload = self._read(length) if length else b""
            if stream == 2:
                self._stderr += payload
                del self._stderr[:-4096]
            else:
                self._stdout += payload
        data = bytes(self._stdout[:size])
        del self._stdout[:size]
        if not self._started:
            self._started = True
            with suppress(Exception):
                self._sock.settimeout(self.timeout)
        return data

    def close(self) -> None:
        with suppress(Exception):
            self._sock.close()


def _usage_from_stats(stats: Mapping[str, Any]) -> ResourceUsage:
    """CPU% of one core and memory without page cache, computed as ``docker stats`` does."""
    cpu = stats.get("cpu_stats") or {}
    pre = stats.get("precpu_stats") or {}
    cpu_delta = (cpu.get("cpu_usage") or {}).get("total_usage", 0) - (
        pre.get("cpu_usage") or {}
    ).get("total_usage", 0)
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or [])
    percent = 0.0
    if cpu_delta > 0 and system_delta > 0 and online:
        percent = cpu_delta / system_delta * online * 100.0
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    # cgroup v1 counts page cache ("cache"), v2 "inactive_file": neither is the app's own.
    cache = detail.get("total_inactive_file", detail.get("inactive_file", detail.get("cache", 0)))
    used = max(0, int(memory.get("usage", 0)) - int(cache or 0))
    return ResourceUsage(cpu_percent=max(0.0, percent), memory_bytes=used)


def _close_when_set(stop: threading.Event, ended: threading.Event, stream: Any, name: str) -> None:
    """Close ``stream`` from a thread of its own once ``stop`` is set; the thread ends
    with the stream (``ended``) when that comes first."""

    def watch() -> None:
        while not ended.wait(_FOLLOW_STOP_POLL):
            if stop.is_set():
                with suppress(Exception):
                    stream.close()
                return

    threading.Thread(target=watch, name=name, daemon=True).start()
