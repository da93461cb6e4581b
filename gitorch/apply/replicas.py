"""From a Service and a slot to the ReplicaSpec a runtime starts (and back, from labels).

Every replica is labelled with its service, its slot (``web-2``), the revision and the
template digest it runs, so the reconciler can always tell, from the runtime alone, which
replicas exist and what they run.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

from gitorch.decide.volumes import volume_label
from gitorch.errors import ConfigError, ReplicaStartFailed
from gitorch.manifests.model import Service, Volume
from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    LABEL_VOLUMES,
    Mount,
    PortRequest,
    ReplicaSpec,
    VolumeSpec,
)


def replica_label(service: str, slot: int) -> str:
    return f"{service}-{slot}"


def slot_of(replica: str) -> int:
    """The slot in a replica label (``web-2`` -> 2); 0 when it carries none."""
    tail = replica.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def read_secret(secrets_dir: Path | None, name: str, service: str, variable: str) -> str:
    """The value of an env var given as ``{secretFile: NAME}``; the value is never logged."""
    if secrets_dir is None:
        raise ConfigError(
            f"service {service}: env {variable} reads secretFile {name!r}, but the daemon has no --secrets-dir"
        )
    root = secrets_dir.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"service {service}: secretFile {name!r} leaves the secrets directory")
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError as exc:
        raise ReplicaStartFailed(
            f"service {service}: cannot read secretFile {name!r} for env {variable}: {exc.strerror}"
        ) from exc


def volume_spec(volume: Volume) -> VolumeSpec:
    """What a driver needs to make ``volume`` on a node."""
    return VolumeSpec(
        name=volume.name,
        host_path=volume.host_path,
        driver=volume.driver,
        driver_opts=dict(volume.driver_opts),
        size_bytes=volume.size_bytes,
    )


def mounts_of(service: Service, volumes: Mapping[str, Volume]) -> tuple[Mount, ...]:
    """The replica's mounts; :class:`ReplicaStartFailed` for a Volume no longer in Git (a
    rolled-back spec may name one)."""
    mounts: list[Mount] = []
    for mount in service.volumes:
        volume = volumes.get(mount.volume)
        if volume is None:
            raise ReplicaStartFailed(
                f"service {service.name}: volume {mount.volume} (mounted at {mount.mount_path}) "
                "is not in Git"
            )
        mounts.append(Mount(mount.name, volume_spec(volume), mount.mount_path, mount.read_only))
    return tuple(mounts)


def replica_spec(
    service: Service,
    slot: int,
    *,
    cluster: str,
    revision: str,
    discovery: Mapping[str, str],
    secrets_dir: Path | None = None,
    volumes: Mapping[str, Volume] | None = None,
    extra_hosts: Mapping[str, str] | None = None,
) -> ReplicaSpec:
    """The runtime spec of ``service``'s replica in ``slot`` (``volumes``: the Volumes in
    Git, which its mounts name; ``discovery`` and ``extra_hosts``: where it reaches its
    dependencies, :func:`gitorch.traffic.discovery.discovery_for`)."""
    env: dict[str, str] = dict(discovery)
    for var in service.env:
        if var.secret_file is not None:
            env[var.name] = read_secret(secrets_dir, var.secret_file, service.name, var.name)
        else:
            env[var.name] = var.value or ""
    limits = service.resources.limits
    return ReplicaSpec(
        name=f"{cluster}-{service.name}-{slot}-{service.template_digest[:6]}-{secrets.token_hex(2)}",
        image=service.image,
        command=service.command,
        args=service.args,
        env=env,
        working_dir=service.working_dir,
        ports=tuple(PortRequest(p.name, p.container_port, p.protocol) for p in service.ports),
        cpu_limit=limits.cpu_millis / 1000 if limits.cpu_millis is not None else None,
        memory_limit=limits.memory_bytes,
        labels={
            LABEL_SERVICE: service.name,
            LABEL_REPLICA: replica_label(service.name, slot),
            LABEL_REVISION: revision,
            LABEL_SPEC_DIGEST: service.template_digest,
            **({LABEL_VOLUMES: volume_label(service)} if service.volumes else {}),
        },
        stop_grace_seconds=float(service.termination_grace_seconds),
        mounts=mounts_of(service, volumes or {}),
        extra_hosts=dict(extra_hosts or {}),
    )
