"""Which nodes make up the cluster, and the cluster's name.

The nodes are the repo's ``kind: Node`` objects; with none, one local node named after
the host, driven by ``--runtime`` (docker if an engine answers, else process).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from gitorch.errors import ConfigError
from gitorch.manifests.model import Node
from gitorch.runtime.base import Runtime
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


def runtime_dir(state_dir: Path, node: str) -> Path:
    """Where the process driver of ``node`` keeps its bookkeeping (stable across runs)."""
    return Path(state_dir) / "nodes" / node


def open_runtimes(
    targets: Iterable[NodeTarget], state_dir: Path, allowed_host_paths: tuple[Path, ...] = ()
) -> dict[str, Runtime]:
    """One runtime per node target (``allowed_host_paths``: ``--allow-host-path``)."""
    from gitorch.runtime import open_runtime

    return {
        t.name: open_runtime(
            t.name,
            t.driver,
            endpoint=t.endpoint if t.driver == "docker" else None,
            state_dir=runtime_dir(state_dir, t.name),
            address=t.address,
            allowed_host_paths=allowed_host_paths,
        )
        for t in targets
    }


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
        )
        for node in sorted(nodes, key=lambda n: n.name)
    ]
    return targets or [default_node(default_driver)]


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
