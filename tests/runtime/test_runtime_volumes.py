"""Volumes through the Runtime contract, on both drivers (issue 16): a volume keeps its
data from one replica to the next, is listed and removed, a readOnly mount cannot be
written, a replica never gets a volume that is not there (Docker would make an empty one
silently), and a hostPath must resolve inside the allowed directories.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from runtime_helpers import DOCKER_ENDPOINT, RuntimeKit

from gitorch.errors import HostPathNotAllowed, ReplicaStartFailed, VolumeError
from gitorch.runtime.base import (
    LABEL_VOLUMES,
    Instance,
    InstanceState,
    Mount,
    Runtime,
    VolumeSpec,
)

DATA = VolumeSpec("data", size_bytes=64 * 2**20)


def mount(spec: VolumeSpec = DATA, *, read_only: bool = False) -> tuple[Mount, ...]:
    return (Mount("data", spec, "/var/lib/data", read_only=read_only),)


def logs_of(runtime: Runtime, instance: Instance, marker: str, timeout: float = 15.0) -> str:
    """The replica's output once it holds ``marker`` (the replica prints it when done)."""
    deadline = time.monotonic() + timeout
    while True:
        text = runtime.logs(instance.id)
        if marker in text:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"no {marker!r} in the replica's output:\n{text}")
        time.sleep(0.05)


def run_once(kit: RuntimeKit, name: str, script: str, **overrides: object) -> str:
    """Run ``script`` in a replica with the data volume, return its output, remove it."""
    runtime = kit.runtime
    spec = kit.shell(name, f"{script}; echo DONE; sleep 60", **overrides)  # type: ignore[arg-type]
    instance = runtime.create(spec, kit.cluster)
    try:
        return logs_of(runtime, instance, "DONE")
    finally:
        runtime.remove(instance.id)


def test_a_volume_keeps_its_data_from_one_replica_to_the_next(runtime_kit: RuntimeKit) -> None:
    runtime, cluster = runtime_kit.runtime, runtime_kit.cluster
    made = runtime.create_volume(DATA, cluster)
    assert (made.name, made.node, made.size_bytes) == ("data", "node-test", 64 * 2**20)
    again = runtime_kit.new_runtime().create_volume(DATA, cluster)  # idempotent: adopted
    assert again.handle == made.handle
    assert [v.name for v in runtime_kit.new_runtime().list_volumes(cluster)] == ["data"]

    wrote = run_once(
        runtime_kit, "writer", 'echo "$VOLUME_DATA" && echo kept > "$VOLUME_DATA/f"', mounts=mount()
    )
    where = "/var/lib/data" if runtime_kit.driver == "docker" else made.handle
    assert wrote.splitlines()[0] == where  # VOLUME_<NAME>: the mountPath, or the directory
    read = run_once(runtime_kit, "reader", 'cat "$VOLUME_DATA/f"', mounts=mount())
    assert "kept" in read

    runtime.remove_volume("data", cluster)
    runtime.remove_volume("data", cluster)  # gone: fine
    assert runtime.list_volumes(cluster) == []
    runtime.create_volume(DATA, cluster)  # a new volume of the same name is a new one
    fresh = run_once(runtime_kit, "fresh", 'cat "$VOLUME_DATA/f" || echo EMPTY', mounts=mount())
    assert "EMPTY" in fresh and "kept" not in fresh


def test_a_read_only_mount_cannot_be_written(runtime_kit: RuntimeKit) -> None:
    runtime, cluster = runtime_kit.runtime, runtime_kit.cluster
    runtime.create_volume(DATA, cluster)
    run_once(runtime_kit, "seed", 'echo seed > "$VOLUME_DATA/f"', mounts=mount())
    out = run_once(
        runtime_kit,
        "ro",
        'cat "$VOLUME_DATA/f"; (echo x > "$VOLUME_DATA/f") 2>/dev/null && echo WROTE || echo REFUSED;'
        ' (echo y > "$VOLUME_DATA/new") 2>/dev/null && echo WROTE || echo REFUSED',
        mounts=mount(read_only=True),
    )
    assert out.count("REFUSED") == 2 and "WROTE" not in out and "seed" in out
    # The volume itself stays writable for the others.
    after = run_once(
        runtime_kit, "rw", 'echo more >> "$VOLUME_DATA/f"; cat "$VOLUME_DATA/f"', mounts=mount()
    )
    assert "seed" in after and "more" in after


def test_a_missing_volume_is_never_made_by_a_replica(runtime_kit: RuntimeKit) -> None:
    runtime, cluster = runtime_kit.runtime, runtime_kit.cluster
    spec = runtime_kit.shell("orphan", "sleep 60", mounts=mount())
    with pytest.raises(ReplicaStartFailed, match="volume data is not on node node-test"):
        runtime.create(spec, cluster)
    assert runtime.list_volumes(cluster) == []
    assert runtime.list_instances(cluster) == []


def test_a_volume_in_use_is_not_removed(runtime_kit: RuntimeKit) -> None:
    runtime, cluster = runtime_kit.runtime, runtime_kit.cluster
    runtime.create_volume(DATA, cluster)
    spec = runtime_kit.shell("user", "sleep 60", mounts=mount(), labels={LABEL_VOLUMES: "data"})
    instance = runtime.create(spec, cluster)
    assert runtime.inspect(instance.id).state is InstanceState.RUNNING
    with pytest.raises(VolumeError, match="data"):
        runtime.remove_volume("data", cluster)
    assert [v.name for v in runtime.list_volumes(cluster)] == ["data"]
    runtime.remove(instance.id)
    runtime.remove_volume("data", cluster)
    assert runtime.list_volumes(cluster) == []


def _with_allowed(kit: RuntimeKit, tmp_path: Path, allowed: Path) -> Runtime:
    """The kit's node again, with ``allowed`` as its --allow-host-path."""
    if kit.driver == "docker":
        from gitorch.runtime.docker import DockerRuntime

        return DockerRuntime(
            "node-test", DOCKER_ENDPOINT, timeout=15.0, allowed_host_paths=(allowed,)
        )
    from gitorch.runtime.process import ProcessRuntime

    return ProcessRuntime(
        "node-test", tmp_path / "state", workdir=tmp_path / "work", allowed_host_paths=(allowed,)
    )


def test_a_host_path_must_resolve_inside_the_allowed_directories(
    runtime_kit: RuntimeKit, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "app").mkdir(parents=True)
    (allowed / "app" / "seed").write_text("from the host\n", encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "sneaky").symlink_to(outside)  # inside by name, outside in fact
    runtime = _with_allowed(runtime_kit, tmp_path, allowed)
    runtime_kit.runtime = runtime
    cluster = runtime_kit.cluster
    with pytest.raises(HostPathNotAllowed, match="outside the allowed directories"):
        runtime.create_volume(VolumeSpec("escape", host_path=str(allowed / "sneaky")), cluster)
    with pytest.raises(HostPathNotAllowed):
        runtime.create_volume(VolumeSpec("escape", host_path=str(outside)), cluster)

    host = VolumeSpec("data", host_path=str(allowed / "app"))
    made = runtime.create_volume(host, cluster)
    assert made.host_path == str(allowed / "app")
    out = run_once(
        runtime_kit,
        "host",
        'cat "$VOLUME_DATA/seed"; echo back > "$VOLUME_DATA/out"',
        mounts=mount(host),
    )
    assert "from the host" in out
    assert (allowed / "app" / "out").read_text(encoding="utf-8") == "back\n"
    runtime.remove_volume("data", cluster)
    assert (allowed / "app" / "out").exists()  # the operator's directory is never deleted
