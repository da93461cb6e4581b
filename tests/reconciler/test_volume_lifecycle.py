"""Issue 16, "What must hold", on the process driver and the real Docker engine: a
service's data lives in its volume through a kill, a rollout and a daemon restart; prune
keeps it (Retain) or deletes it (Delete); a readOnly mount cannot be written; a hostPath
outside the allowed directories is refused at validate time with file:line, one inside
them is the node's own directory; a volume removed by hand is reported and never made
again, empty, under its service.

The service under test is the counter example app: it counts its starts in the volume
and reports two writers at once (``conflicts``), so the single-writer promise is checked
by the service itself; ``LINGER_MS`` keeps a stopping writer writing a little longer, so a
new writer started before the old one has exited would be seen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from reconciler_helpers import (
    REPO_ROOT,
    Cluster,
    DaemonProc,
    commit,
    docker_runtime,
    gitorch,
    pid_of,
    process_runtime,
    remove_cluster,
    wait_for,
)
from volume_helpers import counter_service, page, phase_of, volume_yaml, volumes_of

from gitorch.commands.common import local_actor

TIMEOUT = 90.0


#: Each test on the process driver with its state in a directory and in etcd, and on the
#: real Docker engine (state in a directory: the store does not meet the runtime). One
#: axis of (store, runtime) pairs: a runtime axis beside the suite's own store axis ran the
#: Docker tests twice and, with a store choice of its own, the etcd ones twice.
STORES_AND_RUNTIMES = pytest.mark.parametrize(
    ("cluster", "world"),
    [
        ("sqlite", "process"),
        ("etcd", "process"),
        pytest.param("sqlite", "docker", marks=pytest.mark.docker),
    ],
    indirect=True,
)


@pytest.fixture
def world(request: pytest.FixtureRequest, cluster: Cluster) -> Cluster:
    """A test's cluster on the process driver (``cluster``, on its store) or on the real
    Docker engine, as parametrized."""
    if request.param == "docker":
        return request.getfixturevalue("docker_cluster")  # type: ignore[no-any-return]
    return cluster


def count_is(port: int, starts: int, **fields: str) -> dict[str, str] | None:
    found = page(port)
    if found is None or found.get("starts") != str(starts):
        return None
    return found if all(found.get(k) == v for k, v in fields.items()) else None


def the_instance(daemon: DaemonProc, service: str) -> dict[str, Any]:
    # A daemon just started may not have reported yet while the data plane, which
    # outlived the previous daemon, already serves the replica.
    svc = wait_for(f"{service} reported", lambda: daemon.service(service), TIMEOUT)
    running = [i for i in svc["instances"] if i["state"] == "running"]
    assert len(running) == 1, svc["instances"]
    return running[0]


def kill(world: Cluster, instance_id: str) -> None:
    """SIGKILL a replica behind gitorch's back."""
    if world.driver == "docker":
        subprocess.run(["docker", "kill", instance_id], check=True, capture_output=True)
    else:
        os.kill(pid_of(instance_id), signal.SIGKILL)


def volume_names(world: Cluster) -> list[str]:
    runtime = docker_runtime() if world.driver == "docker" else process_runtime(world.state)
    return [v.name for v in runtime.list_volumes(world.cluster_name() or "")]


@STORES_AND_RUNTIMES
def test_data_lives_through_a_kill_a_rollout_and_a_daemon_restart(world: Cluster) -> None:
    port, driver = world.port, world.driver
    files = {
        "counter.yaml": counter_service("counter", driver=driver, port=port, linger_ms=1500),
        "data.yaml": volume_yaml("data", size="64Mi"),
    }
    commit(world.repo, files, "a counter with its volume")
    daemon = world.daemon()
    wait_for("the first start", lambda: count_is(port, 1), TIMEOUT, describe=daemon.log_tail)

    kill(world, the_instance(daemon, "counter")["id"])
    wait_for("the replacement", lambda: count_is(port, 2), TIMEOUT, describe=daemon.log_tail)

    files["counter.yaml"] = counter_service(
        "counter", driver=driver, port=port, version="2", linger_ms=1500
    )
    commit(world.repo, files, "version 2")
    rolled = wait_for(
        "version 2", lambda: count_is(port, 3, version="2"), TIMEOUT, describe=daemon.log_tail
    )
    assert rolled["conflicts"] == "0"  # the old writer had exited before the new one began

    daemon.stop()
    daemon = world.daemon()
    assert wait_for("the re-adopted replica", lambda: count_is(port, 3, version="2"), TIMEOUT)
    kill(world, the_instance(daemon, "counter")["id"])
    final = wait_for("a start after the restart", lambda: count_is(port, 4), TIMEOUT)
    assert final["conflicts"] == "0" and final["writable"] == "yes"

    (row,) = volumes_of(world.state_args, world.root)
    assert (row["name"], row["phase"], row["accessMode"], row["size"]) == (
        "data",
        "Bound",
        "ReadWriteOnce",
        "64Mi",
    )
    assert row["users"] == ["counter-1"] and row["node"]


@STORES_AND_RUNTIMES
def test_prune_keeps_a_retained_volume_and_deletes_the_other(world: Cluster) -> None:
    port, driver = world.port, world.driver
    service = counter_service("counter", driver=driver, port=port)
    commit(world.repo, {"counter.yaml": service, "data.yaml": volume_yaml()}, "retained")
    daemon = world.daemon(extra=("--allow-mass-prune",))
    wait_for("the first start", lambda: count_is(port, 1), TIMEOUT, describe=daemon.log_tail)

    commit(world.repo, {"counter.yaml": None, "data.yaml": None}, "prune both")
    wait_for(
        "the release", lambda: phase_of(world.state_args, world.root, "data") == "Released", TIMEOUT
    )
    wait_for("the service forgotten", lambda: daemon.service("counter") is None, TIMEOUT)
    assert volume_names(world) == ["data"]  # kept, with its data

    # A Volume of the same name gets it back; this time it is to be deleted when pruned.
    files = {"counter.yaml": service, "data.yaml": volume_yaml(reclaimPolicy="Delete")}
    commit(world.repo, files, "back, reclaimPolicy Delete")
    wait_for("the kept count", lambda: count_is(port, 2), TIMEOUT, describe=daemon.log_tail)

    commit(world.repo, {"counter.yaml": None, "data.yaml": None}, "prune both again")
    wait_for("the deletion", lambda: volume_names(world) == [], TIMEOUT, describe=daemon.log_tail)
    assert volumes_of(world.state_args, world.root) == []
    events = gitorch("history", *world.state_args, "--format", "json", cwd=world.root)
    assert events.code == 0

    commit(world.repo, files, "a new Volume of that name")
    wait_for("a fresh count", lambda: count_is(port, 1), TIMEOUT, describe=daemon.log_tail)


@STORES_AND_RUNTIMES
def test_a_read_only_mount_cannot_be_written(world: Cluster) -> None:
    port, driver = world.port, world.driver
    reader_port = world.second_port
    files = {
        "writer.yaml": counter_service("writer", driver=driver, port=port),
        "reader.yaml": counter_service("reader", driver=driver, port=reader_port, read_only=True),
        "data.yaml": volume_yaml(),
    }
    commit(world.repo, files, "a writer and a reader")
    daemon = world.daemon()
    wait_for(
        "the writer", lambda: count_is(port, 1, writable="yes"), TIMEOUT, describe=daemon.log_tail
    )
    read = wait_for(
        "the reader", lambda: count_is(reader_port, 1), TIMEOUT, describe=daemon.log_tail
    )
    assert read["writable"] == "no"  # it sees the data and cannot change it
    (row,) = volumes_of(world.state_args, world.root)
    assert row["users"] == ["reader-1 (ro)", "writer-1"]


@STORES_AND_RUNTIMES
def test_a_host_path_must_be_inside_the_allowed_directories(world: Cluster) -> None:
    allowed = world.root / "allowed"
    (allowed / "counter").mkdir(parents=True)
    outside = volume_yaml("data", hostPath="/etc/gitorch-test")
    files = {
        "counter.yaml": counter_service("counter", driver=world.driver, port=world.port),
        "data.yaml": outside,
    }
    commit(world.repo, files, "a host path outside")
    args = ("validate", "--repo", str(world.repo), *world.state_args)
    refused = gitorch(*args, "--allow-host-path", str(allowed), cwd=world.root)
    assert refused.code == 1
    assert refused.stdout.strip() == (
        "data.yaml:6:13: spec.hostPath: hostPath /etc/gitorch-test is outside the directories "
        f"the operator allows (--allow-host-path {allowed})"
    )

    files["data.yaml"] = volume_yaml("data", hostPath=str(allowed / "counter"))
    commit(world.repo, files, "a host path inside")
    assert gitorch(*args, cwd=world.root).code == 1  # no daemon, no option: none is allowed
    daemon = world.daemon(extra=("--allow-host-path", str(allowed)))
    wait_for("the first start", lambda: count_is(world.port, 1), TIMEOUT, describe=daemon.log_tail)
    assert (allowed / "counter" / "starts").read_text(encoding="utf-8") == "1\n"
    # validate (and plan) check against the running daemon's --allow-host-path.
    assert gitorch(*args, cwd=world.root).code == 0
    files["data.yaml"] = outside
    commit(world.repo, files, "outside again")
    assert gitorch(*args, cwd=world.root).code == 1
    status = wait_for(
        "the refusal in status",
        lambda: daemon.status().get("lastError"),
        30,
        describe=daemon.log_tail,
    )
    assert "data.yaml:6:13: spec.hostPath" in status
    assert count_is(world.port, 1)  # the last good state keeps running


@STORES_AND_RUNTIMES
def test_a_volume_removed_by_hand_is_reported_and_not_remade_empty(world: Cluster) -> None:
    port, driver = world.port, world.driver
    files = {
        "counter.yaml": counter_service("counter", driver=driver, port=port),
        "data.yaml": volume_yaml(),
    }
    commit(world.repo, files, "a counter")
    daemon = world.daemon()
    wait_for("the first start", lambda: count_is(port, 1), TIMEOUT, describe=daemon.log_tail)
    daemon.stop()
    # Behind gitorch's back: the replica and its volume go (Docker refuses to remove a
    # volume a container still holds).
    instance = the_instance_offline(world)
    runtime = docker_runtime() if driver == "docker" else process_runtime(world.state)
    runtime.remove(instance)
    runtime.remove_volume("data", world.cluster_name() or "")
    daemon = world.daemon()
    assert phase_of(world.state_args, world.root, "data") == "Missing"

    def held() -> dict[str, Any] | None:
        svc = daemon.service("counter")
        error = svc["rollout"]["lastError"] if svc else None
        return svc if error and "volume data was removed from" in error else None

    svc = wait_for("the service held", held, TIMEOUT, describe=daemon.log_tail)
    assert svc["instances"] == []
    plan = gitorch(
        "plan",
        "--repo",
        str(world.repo),
        *world.state_args,
        "--format",
        "json",
        cwd=world.root,
    )
    assert any(a["action"] == "missing" for a in plan.json()["actions"])
    assert volume_names(world) == []  # never made again behind the operator's back

    # Reset where the state is (docker), or through the daemon's API (process): the same
    # check, the same write, who did it in the audit log.
    where = (
        world.state_args if driver == "docker" else ["--server", f"http://127.0.0.1:{daemon.port}"]
    )
    reset = gitorch("volumes", *where, "--reset", "data", cwd=world.root)
    assert reset.code == 0, reset.stderr
    assert reset.stdout == "volume data reset: the next pass makes it anew, empty\n"
    wait_for("a new, empty volume", lambda: count_is(port, 1), TIMEOUT, describe=daemon.log_tail)
    [entry] = [
        e
        for e in gitorch("audit", *world.state_args, "--format", "json", cwd=world.root).json()
        if e["kind"] == "volume.reset"
    ]
    assert entry["actor"] == ("api" if driver == "process" else local_actor())
    assert entry["message"].startswith("volume data reset: the next pass makes it anew, empty")


def the_instance_offline(world: Cluster) -> str:
    """The one replica of the test's cluster, from its runtime (no daemon running)."""
    runtime = docker_runtime() if world.driver == "docker" else process_runtime(world.state)
    (instance,) = runtime.list_instances(world.cluster_name() or "")
    return instance.id


def test_volumes_json_is_in_the_status_api(cluster: Cluster) -> None:
    files = {
        "counter.yaml": counter_service("counter", driver="process", port=cluster.port),
        "data.yaml": volume_yaml(size="1Gi"),
    }
    commit(cluster.repo, files, "a counter")
    daemon = cluster.daemon()
    wait_for("the first start", lambda: count_is(cluster.port, 1), TIMEOUT)
    volumes = wait_for(
        "bound", lambda: [v for v in daemon.status()["volumes"] if v["phase"] == "Bound"], 30
    )
    assert json.loads(json.dumps(volumes))[0]["size"] == "1Gi"


@pytest.mark.docker
def test_the_example_worker_journal_survives_a_replacement(docker_cluster: Cluster) -> None:
    """examples/repo-docker/worker.yaml says its journal survives the worker being
    replaced: both containers' jobs end up in the one journal."""
    from gitorch.runtime.docker import DEFAULT_ENDPOINT, DockerRuntime

    world = docker_cluster
    node = DockerRuntime("local", DEFAULT_ENDPOINT, timeout=15.0)  # the example's Node
    example = REPO_ROOT / "examples" / "repo-docker"
    names = ("node.yaml", "volume.yaml", "worker.yaml")
    commit(world.repo, {n: (example / n).read_text(encoding="utf-8") for n in names}, "worker")
    try:
        daemon = world.daemon()
        first = wait_for("the worker", lambda: running(daemon, "worker"), TIMEOUT)

        def journal() -> list[str]:
            (volume,) = node.list_volumes(world.cluster_name() or "")
            where = subprocess.run(
                ["docker", "volume", "inspect", "-f", "{{.Mountpoint}}", volume.handle],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            path = Path(where) / "jobs.log"
            return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

        wait_for("jobs in the journal", lambda: len(journal()) >= 2, TIMEOUT)
        kill(world, first["id"])
        wait_for(
            "the replacement",
            lambda: (i := running(daemon, "worker")) and i["id"] != first["id"],
            TIMEOUT,
            describe=daemon.log_tail,
        )
        wait_for(
            "the new worker's jobs beside the old ones",
            lambda: sum(" job 1 done " in line for line in journal()) == 2,
            TIMEOUT,
        )
    finally:
        for started in world.daemons:
            started.stop()
        remove_cluster(node, world.cluster_name())


def running(daemon: DaemonProc, service: str) -> dict[str, Any] | None:
    svc = daemon.service(service)
    found = [i for i in (svc or {}).get("instances", []) if i["state"] == "running"]
    return found[0] if len(found) == 1 else None
