"""From a Service and a slot to the ReplicaSpec a runtime starts (and back, from labels).

Every replica is labelled with its service, its slot (``web-2``), the revision and the
template digest it runs, so the reconciler can always tell, from the runtime alone, which
replicas exist and what they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from secrets import token_hex

from gitorch.decide.volumes import volume_label
from gitorch.errors import ReplicaStartFailed
from gitorch.manifests.model import Secret, Service, Volume
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
from gitorch.secrets import SecretValues


def replica_label(service: str, slot: int) -> str:
    return f"{service}-{slot}"


def slot_of(replica: str) -> int:
    """The slot in a replica label (``web-2`` -> 2); 0 when it carries none."""
    tail = replica.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


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
    volumes: Mapping[str, Volume] | None = None,
    secrets: SecretValues | None = None,
    repo_secrets: Mapping[str, Secret] | None = None,
) -> ReplicaSpec:
    """The runtime spec of ``service``'s replica in ``slot`` (``volumes``: the Volumes in
    Git, which its mounts name); secret values are read (or decrypted) now, into the
    spec's ``secret_env`` and ``secret_files`` only."""
    env: dict[str, str] = dict(discovery)
    secret_env: dict[str, str] = {}
    secret_files: dict[str, bytes] = {}
    values = secrets or SecretValues(None)
    for var in service.env:
        if var.ref is not None:
            where = f"service {service.name}: env {var.name}"
            raw = values.value(var.ref, repo_secrets or {}, where=where)
            # As a file's text: a trailing newline (`echo value > file`) is not the value.
            secret_env[var.name] = raw.decode("utf-8", "replace").rstrip("\n")
        else:
            env[var.name] = var.value or ""
    for mount in service.secret_files:
        where = f"service {service.name}: secret file {mount.name}"
        secret_files[mount.name] = values.value(mount.ref, repo_secrets or {}, where=where)
    limits = service.resources.limits
    return ReplicaSpec(
        name=f"{cluster}-{service.name}-{slot}-{service.template_digest[:6]}-{token_hex(2)}",
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
        secret_env=secret_env,
        secret_files=secret_files,
    )
