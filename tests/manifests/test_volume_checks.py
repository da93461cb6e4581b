"""Volumes are checked at validate time (issue 16): a hostPath outside the directories the
operator allows, a sharing mode on a backend that cannot share, and more than one writer
of a ReadWriteOnce volume are refused with file:line and the reason."""

from __future__ import annotations

from manifest_helpers import make_file

from gitorch.manifests import LoadResult, ManifestLoader

SERVICE = """apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  image: shop/app:1
  replicas: {replicas}
  strategy:
    type: {strategy}
  volumes:
    - name: data
      volume: {volume}
      mountPath: /var/lib/data
      readOnly: {read_only}
"""


def service(
    name: str = "app",
    *,
    volume: str = "data",
    replicas: int = 1,
    strategy: str = "RollingUpdate",
    read_only: bool = False,
) -> str:
    return SERVICE.format(
        name=name,
        volume=volume,
        replicas=replicas,
        strategy=strategy,
        read_only="true" if read_only else "false",
    )


def volume(name: str = "data", **spec: str) -> str:
    lines = "".join(f"  {key}: {value}\n" for key, value in spec.items()) or "  {}\n"
    return f"apiVersion: gitorch.dev/v1\nkind: Volume\nmetadata:\n  name: {name}\nspec:\n{lines}"


def load(*texts: str, allowed: tuple[str, ...] = ()) -> LoadResult:
    files = [make_file(f"f{i}.yaml", text) for i, text in enumerate(texts)]
    return ManifestLoader(allowed_host_paths=allowed).load(files, revision="test")


def problems(result: LoadResult) -> list[str]:
    return [str(d) for d in result.diagnostics]


def test_a_plain_volume_with_one_writer_is_valid() -> None:
    result = load(volume(size="1Gi", node="a"), service())
    assert result.ok, problems(result)
    data = result.state.volumes["data"]  # type: ignore[union-attr]
    assert data.single_node and not data.can_share and not data.docker_only


def test_a_host_path_outside_the_allowed_directories_is_refused_with_its_line() -> None:
    text = volume(hostPath="/etc/secrets")
    assert problems(load(text, service())) == [
        "f0.yaml:6:13: spec.hostPath: hostPath /etc/secrets is outside the directories the "
        "operator allows (none: the operator allows host paths with --allow-host-path DIR)"
    ]
    assert problems(load(text, service(), allowed=("/srv/gitorch",))) == [
        "f0.yaml:6:13: spec.hostPath: hostPath /etc/secrets is outside the directories the "
        "operator allows (--allow-host-path /srv/gitorch)"
    ]
    climbing = volume(hostPath="/srv/gitorch/../../etc")
    assert len(problems(load(climbing, service(), allowed=("/srv/gitorch",)))) == 1
    near = volume(hostPath="/srv/gitorch-other/x")  # a sibling with the same prefix
    assert len(problems(load(near, service(), allowed=("/srv/gitorch",)))) == 1
    inside = load(volume(hostPath="/srv/gitorch//db/"), service(), allowed=("/srv/gitorch",))
    assert inside.ok, problems(inside)
    assert inside.state.volumes["data"].host_path == "/srv/gitorch/db"  # type: ignore[union-attr]


def test_a_host_path_is_never_deleted() -> None:
    found = problems(
        load(volume(hostPath="/srv/x", reclaimPolicy="Delete"), service(), allowed=("/srv",))
    )
    assert found == [
        "f0.yaml:7:18: spec.reclaimPolicy: a hostPath is the operator's directory and gitorch "
        "never deletes it: use reclaimPolicy Retain"
    ]


def test_sharing_modes_need_a_backend_that_can_share() -> None:
    (found,) = problems(load(volume(accessMode="ReadWriteMany"), service()))
    assert found.startswith("f0.yaml:6:15: spec.accessMode: accessMode ReadWriteMany needs a")
    nfs = volume(
        accessMode="ReadWriteMany",
        driverOpts="{type: nfs, o: 'addr=10.0.0.1,rw', device: ':/export'}",
    )
    shared = load(nfs, service(replicas=3))
    assert shared.ok, problems(shared)
    assert shared.state.volumes["data"].can_share  # type: ignore[union-attr]
    host = load(
        volume(accessMode="ReadOnlyMany", hostPath="/srv/ro"),
        service(read_only=True),
        allowed=("/srv",),
    )
    assert host.ok, problems(host)
    (writable,) = problems(
        load(volume(accessMode="ReadOnlyMany", hostPath="/srv/ro"), service(), allowed=("/srv",))
    )
    assert "is ReadOnlyMany: mount it with readOnly: true" in writable


def test_a_read_write_once_volume_has_one_writer() -> None:
    (replicas,) = problems(load(volume(), service(replicas=3)))
    assert replicas.startswith("f1.yaml:7:13: spec.replicas: ReadWriteOnce Volume 'data' has one")
    assert "replicas 3 would be 3 writers" in replicas
    canary = problems(load(volume(), service(strategy="Canary")))  # (and it lacks expose)
    assert any(
        p.startswith("f1.yaml:9:11: spec.strategy.type: ReadWriteOnce Volume 'data' has one")
        and "strategy Canary runs the old and the new version side by side" in p
        for p in canary
    ), canary
    two = problems(load(volume(), service("a"), service("b")))
    assert two == [
        "f2.yaml:12:15: spec.volumes[0].volume: ReadWriteOnce Volume 'data' has one writer at "
        "a time, and Service 'a' already mounts it read-write (mount it readOnly, or use a "
        "Volume with accessMode ReadWriteMany on a backend that can share)"
    ]
    readers = load(volume(), service("a"), service("b", replicas=3, read_only=True))
    assert readers.ok, problems(readers)
    recreate = load(volume(), service(strategy="Recreate"))
    assert recreate.ok, problems(recreate)


def test_a_docker_volume_is_not_for_process_only_services() -> None:
    process_only = service().replace("  image: shop/app:1\n", "  command: [sleep, '60']\n")
    (found,) = problems(
        load(volume(driver="local", driverOpts="{type: tmpfs, device: tmpfs}"), process_only)
    )
    assert "is a Docker volume (driver/driverOpts)" in found
    assert found.startswith("f1.yaml:12:15: spec.volumes[0].volume:")
    (both,) = problems(
        load(volume(hostPath="/srv/x", driver="local"), service(), allowed=("/srv",))
    )
    assert "give hostPath or driver/driverOpts, not both" in both
