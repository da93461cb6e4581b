"""Which nodes make up the cluster, and the cluster's name.

The nodes are the repo's ``kind: Node`` objects; with none, one local node named after
the host, driven by ``--runtime`` (docker if an engine answers, else process). The nodes
NodePools made (their records in the store) come on top (:func:`pool_targets`).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

from gitorch.errors import ConfigError
from gitorch.manifests.build import build_node
from gitorch.manifests.model import (
    INGRESS_NEVER,
    INGRESS_REPLICAS,
    POOL_LABEL,
    Node,
    Origin,
    SSHConfig,
    TLSConfig,
)
from gitorch.runtime.base import EngineAccess, Runtime
from gitorch.state import NodePoolRecord

if TYPE_CHECKING:
    from gitorch.state import StateStore

_CLUSTER_FILE = "cluster"


@dataclass(frozen=True)
class NodeTarget:
    """A node to observe and place on: the repo's Node, or the implicit local one."""

    name: str
    driver: str
    endpoint: str | None = None
    address: str = "127.0.0.1"
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cpu_millis: int | None = None  # None: what the runtime reports
    memory_bytes: int | None = None
    taints: tuple[tuple[str, str, str], ...] = ()
    unschedulable: bool = False
    drain: bool = False
    tls: TLSConfig | None = None  # tcp:// engines: files named under the secrets directory
    ssh: SSHConfig | None = None  # ssh:// engines: key and known hosts, likewise
    ingress: str = INGRESS_REPLICAS  # spec.ingress (see own_ingress)

    @property
    def remote(self) -> bool:
        """Whether the node is another host than the daemon's: a docker engine reached
        over tcp or ssh whose address is not a loopback one. A process node, a local
        socket or a loopback address share the daemon's host (and its ingress)."""
        if self.driver != "docker" or not self.endpoint:
            return False
        if not self.endpoint.startswith(("tcp://", "ssh://")):
            return False
        return not _loopback(self.address)

    @property
    def own_ingress(self) -> bool:
        """Whether this node's host may serve exposed services itself (a remote host
        whose ``spec.ingress`` is not ``never``); the others are served by the daemon's."""
        return self.remote and self.ingress != INGRESS_NEVER


def _loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


def runtime_dir(state_dir: Path, node: str) -> Path:
    """Where the process driver of ``node`` keeps its bookkeeping (stable across runs)."""
    return Path(state_dir) / "nodes" / node


def open_runtimes(
    targets: Iterable[NodeTarget],
    state_dir: Path,
    allowed_host_paths: tuple[Path, ...] = (),
    secrets_dir: Path | None = None,
) -> dict[str, Runtime]:
    """One runtime per node target (``allowed_host_paths``: ``--allow-host-path``;
    ``secrets_dir``: where a node's TLS and ssh files are named). A node whose files
    cannot be found still gets its runtime: it reports NotReady with the reason, and the
    other nodes are reached as usual."""
    from gitorch.runtime import open_runtime

    runtimes: dict[str, Runtime] = {}
    for t in targets:
        access = EngineAccess()
        if t.driver == "docker":
            access = engine_access(t, secrets_dir)
        runtimes[t.name] = open_runtime(
            t.name,
            t.driver,
            endpoint=t.endpoint if t.driver == "docker" else None,
            state_dir=runtime_dir(state_dir, t.name),
            address=t.address,
            allowed_host_paths=allowed_host_paths,
            access=access,
        )
    return runtimes


def engine_access(target: NodeTarget, secrets_dir: Path | None) -> EngineAccess:
    """A docker node's TLS and ssh settings with their files resolved under the secrets
    directory; a name that cannot be used becomes ``EngineAccess.problem``."""
    try:
        if target.tls is not None:
            tls = target.tls
            return EngineAccess(
                tls=True,
                ca_cert=_secret(secrets_dir, tls.ca_cert, target.name, "tls.caCert"),
                client_cert=_secret(secrets_dir, tls.client_cert, target.name, "tls.clientCert"),
                client_key=_secret(secrets_dir, tls.client_key, target.name, "tls.clientKey"),
                verify=tls.verify,
            )
        if target.ssh is not None:
            ssh = target.ssh
            return EngineAccess(
                identity_file=_secret(
                    secrets_dir, ssh.identity_file, target.name, "ssh.identityFile"
                ),
                known_hosts_file=_secret(
                    secrets_dir, ssh.known_hosts_file, target.name, "ssh.knownHostsFile"
                ),
            )
    except ConfigError as exc:
        # Still TLS: `gitorch nodes` must not call such a node "tcp (no TLS)".
        return EngineAccess(tls=target.tls is not None, problem=exc.message)
    return EngineAccess()


def _secret(secrets_dir: Path | None, name: str | None, node: str, field: str) -> str | None:
    """The file ``name`` under ``secrets_dir`` (absolute), or None when not given."""
    if name is None:
        return None
    if secrets_dir is None:
        raise ConfigError(
            f"node {node}: runtime.{field} names {name!r}, but no --secrets-dir was given "
            "(give it; plan, nodes, status and proxy stop otherwise read a running "
            "daemon's)"
        )
    root = Path(secrets_dir).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"node {node}: runtime.{field} {name!r} leaves the secrets directory")
    if not path.is_file():
        raise ConfigError(f"node {node}: runtime.{field}: no file {name!r} in {root}")
    return str(path)


def local_node_name() -> str:
    """The host name, made a valid node name."""
    name = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower()).strip("-")
    return name[:63] or "local"


def default_node(driver: str) -> NodeTarget:
    return NodeTarget(
        name=local_node_name(), driver=driver, labels=MappingProxyType({"node": local_node_name()})
    )


def node_targets(nodes: Iterable[Node], default_driver: str) -> list[NodeTarget]:
    """Targets from the repo's Nodes, or the implicit local node when there are none."""
    targets = [
        NodeTarget(
            name=node.name,
            driver=node.driver,
            endpoint=node.endpoint,
            address=node.address,
            labels=MappingProxyType({**node.labels, "node": node.name}),
            cpu_millis=node.capacity.cpu_millis,
            memory_bytes=node.capacity.memory_bytes,
            taints=tuple((t.key, t.value or "", t.effect) for t in node.taints),
            unschedulable=node.unschedulable,
            drain=node.drain,
            tls=node.tls,
            ssh=node.ssh,
            ingress=node.ingress,
        )
        for node in sorted(nodes, key=lambda n: n.name)
    ]
    return targets or [default_node(default_driver)]


def applied_nodes(store: StateStore | None) -> list[Node]:
    """The Nodes as last applied from Git (the store's inventory); [] when none or unreadable.

    The store's node registry keeps only name, driver, endpoint and labels; capacity,
    taints, cordon, address, TLS and ssh live in the applied Node objects, and readers
    must use those (a node's explicit capacity, not the machine's; its engine's CA).
    A Node that has left Git stays here while replicas still run on it
    (:func:`leaving_targets`).
    """
    if store is None:
        return []
    nodes: list[Node] = []
    for applied in store.list_applied():
        if applied.kind != "Node":
            continue
        try:
            nodes.append(build_node(applied.spec, Origin("(state store)", 0)))
        except (KeyError, TypeError, ValueError):
            return []  # an entry this version cannot read: fall back to the registry
    return nodes


def leaving_targets(applied: Iterable[Node], declared: Iterable[NodeTarget]) -> list[NodeTarget]:
    """The Nodes Git no longer declares but whose replicas may still run: drained targets.

    Deleting a Node from Git moves its replicas away (a drain: replacements elsewhere
    first, then the old ones stop) or, with their services deleted too, prunes them; the
    node is forgotten once no replica runs there (``Bookkeeping.nodes_and_volumes``).
    Never observing it again would leave its replicas running untracked."""
    names = {t.name for t in declared}
    gone = [node for node in applied if node.name not in names]
    return [replace(t, drain=True) for t in node_targets(gone, "process")] if gone else []


def pool_targets(records: Iterable[NodePoolRecord]) -> list[NodeTarget]:
    """The nodes NodePools made, each as its provider returned it and with the template
    it was made from (labels plus the pool's label, capacity, taints, TLS). A draining one is
    drained by the store's drain flag (as ``gitorch drain``), not here: a target that
    changes rebuilds the reconciler's runtimes and health monitor."""
    return [
        NodeTarget(
            name=node["name"],
            driver="docker",
            endpoint=node["endpoint"],
            address=node.get("address") or "127.0.0.1",
            labels=MappingProxyType(
                {**(node.get("labels") or {}), POOL_LABEL: record.pool, "node": node["name"]}
            ),
            cpu_millis=node.get("cpu"),
            memory_bytes=node.get("memory"),
            taints=tuple(
                (t["key"], t.get("value") or "", t["effect"]) for t in node.get("taints") or ()
            ),
            tls=_pool_tls(node.get("tls")),
        )
        for record in records
        for node in record.nodes
    ]


def _pool_tls(tls: Mapping[str, object] | None) -> TLSConfig | None:
    """A pool node's TLS as its record keeps it (None: made without TLS)."""
    if not tls:
        return None
    files = {k: v if isinstance(v, str) else None for k, v in tls.items()}
    return TLSConfig(
        files.get("caCert"),
        files.get("clientCert"),
        files.get("clientKey"),
        tls.get("verify") is not False,
    )


def choose_default_driver(requested: str | None) -> str:
    """``--runtime``: as asked, else docker when an engine answers, else process."""
    if requested in ("docker", "process"):
        return requested
    if requested not in (None, "", "auto"):
        raise ConfigError(f"--runtime {requested!r}: expected docker or process")
    from gitorch.runtime import docker_available

    return "docker" if docker_available(timeout=0.5) else "process"


def existing_cluster_name(state_dir: Path) -> str | None:
    """The cluster name of ``state_dir``, or None when nothing was ever run from it."""
    try:
        return (Path(state_dir) / _CLUSTER_FILE).read_text(encoding="utf-8").strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def cluster_identity(store: StateStore | None, local_dir: Path, *, create: bool) -> str | None:
    """The cluster name of ``store``: kept in etcd with etcd state (every daemon of the
    namespace, on any host, labels replicas alike), else in the state directory's file.
    ``create``: make one when there is none yet (apply, the daemon)."""
    if store is not None and store.location.etcd is not None:
        from gitorch.state.etcd.backend import EtcdBackend

        backend = store.backend
        assert isinstance(backend, EtcdBackend)
        return backend.cluster_name(_new_cluster_name if create else None)
    return cluster_name(local_dir) if create else existing_cluster_name(local_dir)


def _new_cluster_name() -> str:
    return f"gitorch-{secrets.token_hex(3)}"


def write_cluster_name(state_dir: Path, name: str) -> None:
    """Make ``name`` the cluster name of ``state_dir`` (``gitorch state migrate``)."""
    path = Path(state_dir) / _CLUSTER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{_CLUSTER_FILE}.{secrets.token_hex(4)}")
    tmp.write_text(f"{name}\n", encoding="utf-8")
    tmp.replace(path)


def cluster_name(state_dir: Path) -> str:
    """A name unique to this state directory, so two gitorch installs on one Docker
    engine never see each other's replicas. Created on first use (by apply or the daemon;
    read-only commands use :func:`existing_cluster_name`)."""
    path = Path(state_dir) / _CLUSTER_FILE
    name = existing_cluster_name(state_dir)
    if name:
        return name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{_CLUSTER_FILE}.{secrets.token_hex(4)}")
    tmp.write_text(f"{_new_cluster_name()}\n", encoding="utf-8")
    try:
        os.link(tmp, path)  # atomic and exclusive: of two racing processes one name wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text(encoding="utf-8").strip()
