"""observe(): real replicas on real runtimes, grouped per service and joined with the store."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_address_helpers import local_docker_publish_host
from live_helpers import (
    SHA_1,
    SHA_2,
    LiveNodeKit,
    closed_tcp_endpoint,
    load_services,
    process_kit,
    record_applied_revision,
    record_rollout,
    remove_cluster,
    start_replicas,
)

from gitorch.live import LiveState, NodeTarget, observe
from gitorch.runtime.docker import DockerRuntime
from gitorch.state import RolloutPhase, StateStore


def test_replicas_grouped_per_service_and_joined_with_the_store(
    live_node: LiveNodeKit, cluster: str, store: StateStore
) -> None:
    services = load_services(
        live_node.idle("web", replicas=3),
        live_node.idle("orphan", replicas=1),
        live_node.idle("planned", replicas=2),
    )
    web, orphan, planned = services["web"], services["orphan"], services["planned"]
    # web is mid-rollout: one replica still of the old revision and template
    old = start_replicas(live_node.runtime, web, cluster, 1, revision=SHA_1, digest="old-digest")
    new = start_replicas(live_node.runtime, web, cluster, 2, first=2, revision=SHA_2)
    start_replicas(live_node.runtime, orphan, cluster)  # running, but nothing recorded
    record_rollout(store, web, revision=SHA_2, phase=RolloutPhase.PROGRESSING, step=1, weight=40)
    record_rollout(store, planned, revision=SHA_2)  # recorded, but no replica runs
    record_applied_revision(store, SHA_1, ["web"])
    # Another cluster on the same node must stay invisible.
    other = f"{cluster}-other"
    try:
        start_replicas(live_node.runtime, orphan, other, 1)

        live = observe([live_node.target], {live_node.name: live_node.runtime}, cluster, store)
    finally:
        remove_cluster(live_node.runtime, other)

    assert live.cluster == cluster
    assert set(live.services) == {"web", "orphan", "planned"}
    assert live.last_applied_revision == SHA_1
    node = live.nodes[live_node.name]
    assert node.ready and node.driver == live_node.driver and node.message == ""
    assert node.cpu_millis > 0 and node.memory_bytes > 0
    assert live.unknown_nodes == frozenset()

    web_live = live.services["web"]
    assert web_live.applied is not None
    assert web_live.applied.revision == SHA_2
    assert web_live.applied.digest == web.template_digest
    assert web_live.applied.canonical == web.canonical
    assert (web_live.applied.phase, web_live.applied.step, web_live.applied.weight) == (
        "Progressing",
        1,
        40,
    )
    # sorted by replica; revision and template digest come from each replica's labels
    assert [(r.replica, r.revision, r.template_digest) for r in web_live.replicas] == [
        ("1", SHA_1, "old-digest"),
        ("2", SHA_2, web.template_digest),
        ("3", SHA_2, web.template_digest),
    ]
    assert [r.id for r in web_live.replicas] == [i.id for i in old + new]
    assert all(r.node == live_node.name and r.service == "web" for r in web_live.replicas)
    assert all(r.state == "running" and r.ready is None for r in web_live.replicas)
    assert len(web_live.running) == 3

    orphan_live = live.services["orphan"]
    assert orphan_live.applied is None
    assert [r.replica for r in orphan_live.replicas] == ["1"]

    planned_live = live.services["planned"]
    assert planned_live.applied is not None and planned_live.applied.revision == SHA_2
    assert planned_live.replicas == ()


def test_without_a_store_only_replicas_are_seen(live_node: LiveNodeKit, cluster: str) -> None:
    services = load_services(live_node.idle("web", replicas=1))
    start_replicas(live_node.runtime, services["web"], cluster)

    live = observe([live_node.target], {live_node.name: live_node.runtime}, cluster)

    assert list(live.services) == ["web"]
    assert live.services["web"].applied is None
    assert live.last_applied_revision is None


def test_a_stopped_replica_is_observed_as_exited(
    process_node: LiveNodeKit, cluster: str, store: StateStore
) -> None:
    web = load_services(process_node.idle("web", replicas=2))["web"]
    first, _ = start_replicas(process_node.runtime, web, cluster)
    record_rollout(store, web)
    process_node.runtime.stop(first.id, grace_seconds=1.0)

    live = observe([process_node.target], {process_node.name: process_node.runtime}, cluster, store)

    states = {r.replica: r.state for r in live.services["web"].replicas}
    assert states == {"1": "exited", "2": "running"}
    assert [r.replica for r in live.services["web"].running] == ["2"]


def test_an_unchanged_replica_is_the_same_object_in_the_next_observation(
    process_node: LiveNodeKit, cluster: str, store: StateStore
) -> None:
    """Issue 20: observing 4,000 replicas builds only what moved (the process driver
    hands out the same Instance for an unchanged replica); one that exited is new."""
    web = load_services(process_node.idle("web", replicas=2))["web"]
    first, second = start_replicas(process_node.runtime, web, cluster)
    record_rollout(store, web)
    targets, runtimes = [process_node.target], {process_node.name: process_node.runtime}
    before = {r.id: r for r in observe(targets, runtimes, cluster, store).services["web"].replicas}
    process_node.runtime.stop(first.id, grace_seconds=1.0)
    after = {r.id: r for r in observe(targets, runtimes, cluster, store).services["web"].replicas}
    assert after[second.id] is before[second.id]
    assert after[first.id] is not before[first.id]
    assert (before[first.id].state, after[first.id].state) == ("running", "exited")


# -- nodes that do not answer ------------------------------------------------------------


@pytest.fixture
def silent_engine() -> Iterator[str]:
    """``tcp://`` endpoint of a socket that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"


def _observe_with_a_down_node(
    up: LiveNodeKit, down: NodeTarget, down_runtime: DockerRuntime, cluster: str, store: StateStore
) -> tuple[float, LiveState]:
    web = load_services(up.idle("web", replicas=2))["web"]
    start_replicas(up.runtime, web, cluster)
    record_rollout(store, web)
    started = time.monotonic()
    live = observe(
        [down, up.target], {down.name: down_runtime, up.name: up.runtime}, cluster, store
    )
    return time.monotonic() - started, live


def test_engine_refusing_connections_is_not_ready_and_others_are_observed(
    process_node: LiveNodeKit, cluster: str, store: StateStore
) -> None:
    endpoint = closed_tcp_endpoint()
    down = NodeTarget(name="node-down", driver="docker", endpoint=endpoint)

    elapsed, live = _observe_with_a_down_node(
        process_node, down, DockerRuntime("node-down", endpoint, timeout=5.0), cluster, store
    )

    assert elapsed < 5.0  # a refused connection fails at once, far below the timeout
    node = live.nodes["node-down"]
    assert node.ready is False
    assert node.message, "a NotReady node says why"
    assert endpoint.split("//")[1] in node.message or "127.0.0.1" in node.message
    assert live.unknown_nodes == frozenset({"node-down"})
    replicas = live.replicas()
    assert {r.node for r in replicas} == {process_node.name}
    assert len(replicas) == 2
    assert live.nodes[process_node.name].ready


def test_engine_that_never_answers_costs_at_most_the_driver_timeout(
    process_node: LiveNodeKit, cluster: str, store: StateStore, silent_engine: str
) -> None:
    down = NodeTarget(name="node-hung", driver="docker", endpoint=silent_engine)
    timeout = 1.0

    elapsed, live = _observe_with_a_down_node(
        process_node,
        down,
        DockerRuntime("node-hung", silent_engine, timeout=timeout),
        cluster,
        store,
    )

    # one engine call (client creation may add a version request): a few timeouts at most
    assert elapsed < 4 * timeout, f"observe took {elapsed:.2f}s with a {timeout}s timeout"
    assert live.nodes["node-hung"].ready is False
    assert live.nodes["node-hung"].message
    assert len(live.services["web"].replicas) == 2


@pytest.mark.docker
def test_three_nodes_one_down(
    docker_node: LiveNodeKit, state_dir: Path, cluster: str, store: StateStore
) -> None:
    proc = process_kit(state_dir, "node-p")
    endpoint = closed_tcp_endpoint()
    down = NodeTarget(name="node-down", driver="docker", endpoint=endpoint)
    runtimes = {
        proc.name: proc.runtime,
        docker_node.name: docker_node.runtime,
        "node-down": DockerRuntime("node-down", endpoint, timeout=5.0),
    }
    try:
        on_process = load_services(proc.idle("api", replicas=1))["api"]
        on_docker = load_services(docker_node.api("api", replicas=1))["api"]
        start_replicas(proc.runtime, on_process, cluster, 1, first=1)
        start_replicas(docker_node.runtime, on_docker, cluster, 1, first=2)
        record_rollout(store, on_docker)

        live = observe([proc.target, docker_node.target, down], runtimes, cluster, store)
    finally:
        remove_cluster(proc.runtime, cluster)

    assert {n: node.ready for n, node in live.nodes.items()} == {
        "node-p": True,
        "node-d": True,
        "node-down": False,
    }
    # one service, replicas from both answering nodes
    assert [(r.replica, r.node) for r in live.services["api"].replicas] == [
        ("1", "node-p"),
        ("2", "node-d"),
    ]
    docker_replica = live.services["api"].replicas[1]
    assert docker_replica.image == docker_node.api_image
    assert docker_replica.address is not None
    assert docker_replica.address.startswith(f"{local_docker_publish_host()}:")
