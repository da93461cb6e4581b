"""gitorch.runtime: the node runtime layer.

:func:`open_runtime` builds the driver a node asks for; :func:`docker_available` tells
whether a Docker engine answers (the CLI's default driver choice). The drivers themselves
are imported lazily so that using one never requires the other's dependencies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from gitorch.errors import ConfigError
from gitorch.runtime.base import Runtime

__all__ = ["docker_available", "open_runtime", "sweep_secret_files"]


def sweep_secret_files(cluster: str, keep: set[str]) -> int:
    """Remove the tmpfs secret files of ``cluster``'s replicas that no longer exist
    (``keep``: the names of all that do, on every node). Call it only when every node
    answered: an unknown replica's files must stay."""
    from gitorch.runtime._secret_files import sweep

    return sweep(cluster, keep)


def docker_available(endpoint: str | None = None, timeout: float = 1.0) -> bool:
    """Whether a Docker engine answers a ping at ``endpoint`` (default: ``$DOCKER_HOST``,
    else the local socket)."""
    from gitorch.runtime.docker import docker_available as _available

    return _available(endpoint, timeout)


def open_runtime(
    node_name: str,
    driver: Literal["docker", "process"] | str,
    *,
    endpoint: str | None = None,
    state_dir: Path | None = None,
    address: str = "127.0.0.1",
    allowed_host_paths: tuple[Path, ...] = (),
) -> Runtime:
    """The :class:`Runtime` for one node.

    ``endpoint`` is the Docker engine URL (docker driver; default ``$DOCKER_HOST``, else
    the local socket);
    ``state_dir`` is where the process driver keeps its bookkeeping (required for it), and
    where both keep the output of removed replicas (``gitorch logs --previous``);
    ``allowed_host_paths``: where a Volume's hostPath may be (``--allow-host-path``).
    """
    if driver == "docker":
        from gitorch.runtime.docker import DockerRuntime, default_endpoint

        return DockerRuntime(
            node_name,
            endpoint or default_endpoint(),
            address=address,
            state_dir=Path(state_dir) if state_dir is not None else None,
            allowed_host_paths=allowed_host_paths,
        )
    if driver == "process":
        if state_dir is None:
            raise ConfigError(f"node {node_name}: the process driver needs a state directory")
        if endpoint:
            raise ConfigError(f"node {node_name}: the process driver takes no endpoint")
        from gitorch.runtime.process import ProcessRuntime

        return ProcessRuntime(
            node_name, Path(state_dir), address=address, allowed_host_paths=allowed_host_paths
        )
    raise ConfigError(f"node {node_name}: unknown runtime driver {driver!r} (docker | process)")
