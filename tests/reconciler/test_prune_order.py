"""Prune and dependsOn through the daemon (issue 5, "What must hold").

* A Service removed from Git is drained and removed: its replicas are gone, its endpoint
  is closed, status no longer lists it; what gitorch did not create (a plain process, a
  replica or container of another cluster, an unlabelled container) is untouched.
* ``web dependsOn api``: on a fresh cluster no web replica starts before api is Healthy,
  and web's replicas get ``API_SERVICE_HOST``/``API_SERVICE_PORT``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconciler_helpers import (
    API_APP,
    Cluster,
    LoadClient,
    commit,
    converged,
    docker_runtime,
    docker_service,
    environ_of,
    free_port,
    gitorch,
    instance_ids,
    pid_of,
    port_open,
    process_runtime,
    process_service,
    remove_cluster,
    wait_for,
)

from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_SERVICE,
    PortRequest,
    ReplicaSpec,
    Runtime,
)
from gitorch.state import StateStore

OTHER_CLUSTER = "gitorch-other"


def _foreign_spec(name: str, image: str | None, command: tuple[str, ...]) -> ReplicaSpec:
    """A replica of service ``extra`` as another gitorch cluster would label it."""
    return ReplicaSpec(
        name=name,
        image=image,
        command=command,
        env={"VERSION": "foreign"},
        ports=(PortRequest("http", 8080),),
        labels={LABEL_SERVICE: "extra", LABEL_REPLICA: "extra-1"},
        stop_grace_seconds=1.0,
    )


@pytest.fixture
def foreign_process(cluster: Cluster) -> Iterator[tuple[subprocess.Popen[bytes], Runtime, str]]:
    """A plain process, and a process replica of another cluster in the same bookkeeping."""
    plain = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )
    runtime = process_runtime(cluster.state)
    other = runtime.create(
        _foreign_spec("other-extra-1", None, (sys.executable, str(API_APP))), OTHER_CLUSTER
    )
    try:
        yield plain, runtime, other.id
    finally:
        plain.kill()
        plain.wait(5)
        remove_cluster(runtime, OTHER_CLUSTER)


def _prune(cluster: Cluster, api_yaml: str, extra_yaml: str) -> None:
    """Deploy api + extra, remove extra from Git; check what is gone and what is not."""
    extra_port = int(extra_yaml.split("expose: {port: ")[1].split(",")[0])
    sha1 = commit(cluster.repo, {"api.yaml": api_yaml, "extra.yaml": extra_yaml}, "api + extra")
    daemon = cluster.daemon()
    for name in ("api", "extra"):

        def done(name: str = name) -> bool:
            return converged(daemon.service(name), sha1, 2)

        wait_for(f"{name} converged", done, 40, describe=daemon.log_tail)
    assert port_open(extra_port)
    api_ids = instance_ids(daemon.service("api"))
    extra_ids = instance_ids(daemon.service("extra"))

    # Clients keep requests in flight on extra while it is removed: each must get its
    # answer (drained); once the endpoint is closed, new connections are refused.
    with LoadClient(extra_port) as load:
        wait_for("load flowing", lambda: load.total > 20, 10)
        sha2 = commit(cluster.repo, {"extra.yaml": None}, "extra leaves Git")
        wait_for(
            "extra pruned",
            lambda: daemon.service("extra") is None and not port_open(extra_port),
            20,
            describe=lambda: str(daemon.status()) + daemon.log_tail(),
        )
    cut = [f for f in load.failures if not f.startswith("ConnectionRefusedError")]
    assert cut == [], (cut[:10], load.ok)
    runtime = docker_runtime() if cluster.driver == "docker" else process_runtime(cluster.state)
    left = {i.id for i in runtime.list_instances(cluster.cluster_name() or "")}
    assert not (left & extra_ids), "a replica of the pruned service is still there"
    assert instance_ids(daemon.service("api")) == api_ids, "api was touched by the prune"
    status = gitorch("status", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert [s["name"] for s in status.json()["services"]] == ["api"]
    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    newest = history.json()[0]
    assert newest["revision"] == sha2 and newest["result"] == "succeeded", newest
    assert {"kind": "Service", "name": "extra", "action": "delete"}.items() <= newest["changes"][
        0
    ].items(), newest["changes"]


def test_removed_service_is_pruned_and_foreign_processes_untouched(
    cluster: Cluster, foreign_process: tuple[subprocess.Popen[bytes], Runtime, str]
) -> None:
    plain, runtime, other_id = foreign_process
    _prune(
        cluster,
        process_service("api", port=cluster.port, replicas=2),
        # Slow answers (300 ms): requests are in flight when extra is removed.
        process_service("extra", port=free_port(), replicas=2, env={"SLOW_MS": "300"}),
    )
    time.sleep(1)  # a couple more passes after the prune
    assert plain.poll() is None, "a process gitorch did not start was stopped"
    assert runtime.inspect(other_id).state.value == "running", (
        "another cluster's replica was touched"
    )


@pytest.mark.docker
def test_removed_service_is_pruned_and_foreign_containers_untouched(
    docker_cluster: Cluster,
) -> None:
    cluster = docker_cluster
    runtime = docker_runtime()
    other = runtime.create(
        _foreign_spec(f"{OTHER_CLUSTER}-extra-{free_port()}", "gitorch-example/api:1", ()),
        OTHER_CLUSTER,
    )
    plain_name = f"gitorch-test-unlabelled-{free_port()}"
    subprocess.run(
        ["docker", "run", "-d", "--name", plain_name, "gitorch-example/api:1"],
        check=True,
        capture_output=True,
    )
    try:
        _prune(
            cluster,
            docker_service("api", port=cluster.port, image="gitorch-example/api:1", replicas=2),
            docker_service("extra", port=free_port(), image="gitorch-example/api:1", replicas=2),
        )
        time.sleep(1)
        assert runtime.inspect(other.id).state.value == "running"
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", plain_name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert state == "true", "an unlabelled container was touched"
    finally:
        remove_cluster(runtime, OTHER_CLUSTER)
        subprocess.run(["docker", "rm", "-f", plain_name], capture_output=True, check=False)


def _events(state: Path | str) -> list[tuple[float, str, str | None]]:
    with StateStore(state, readonly=True) as store:
        return [
            (e.at, e.kind, e.service) for e in store.list_events(limit=None, newest_first=False)
        ]


def test_depends_on_orders_a_fresh_cluster_and_passes_the_endpoint(cluster: Cluster) -> None:
    api_port, web_port = cluster.port, free_port()
    # api takes a while to become ready (initialDelaySeconds 2): a web replica started
    # without waiting would show up in that window.
    api = process_service("api", port=api_port, replicas=2, initial_delay=2)
    web = process_service("web", port=web_port, replicas=2, depends_on=["api"])
    sha = commit(cluster.repo, {"api.yaml": api, "web.yaml": web}, "api and web")
    daemon = cluster.daemon()
    wait_for(
        "web converged",
        lambda: converged(daemon.service("web"), sha, 2),
        40,
        describe=daemon.log_tail,
    )
    assert converged(daemon.service("api"), sha, 2)

    events = _events(cluster.store_location)
    api_done = next(at for at, kind, svc in events if kind == "rollout.completed" and svc == "api")
    web_svc = daemon.service("web")
    assert web_svc is not None
    first_web = min(i["startedAt"] for i in web_svc["instances"])
    api_svc = daemon.service("api")
    assert api_svc is not None
    last_api = max(i["startedAt"] for i in api_svc["instances"])
    # api became Healthy at least initialDelaySeconds after its replicas started.
    assert api_done >= last_api + 1.9, (api_done, last_api)
    assert first_web >= api_done - 0.05, (first_web, api_done)

    for instance in web_svc["instances"]:
        env = environ_of(pid_of(instance["id"]))
        assert env.get("API_SERVICE_HOST") == "127.0.0.1", env
        assert env.get("API_SERVICE_PORT") == str(api_port), env
