"""assess_readiness() with the applied readinessProbe against real apps, and LiveState's immutability."""

from __future__ import annotations

import dataclasses

import pytest
from live_helpers import (
    LiveNodeKit,
    assess_until_answering,
    closed_tcp_endpoint,
    load_services,
    record_rollout,
    start_replicas,
)

from gitorch.live import observe
from gitorch.live.observe import assess_readiness
from gitorch.runtime.docker import DockerRuntime
from gitorch.state import StateStore


def test_probe_passes_fails_or_is_absent(
    live_node: LiveNodeKit, cluster: str, store: StateStore
) -> None:
    services = load_services(
        live_node.api("good", replicas=1),
        live_node.api("sick", replicas=1, fail_mode="unhealthy"),  # /healthz answers 503
        live_node.idle("plain", replicas=1),  # no readinessProbe
    )
    for service in services.values():
        start_replicas(live_node.runtime, service, cluster)
        record_rollout(store, service)
    runtimes = {live_node.name: live_node.runtime}
    live = observe([live_node.target], runtimes, cluster, store)

    assessed = assess_until_answering(live, runtimes)

    good, sick, plain = (assessed.services[n].replicas[0] for n in ("good", "sick", "plain"))
    assert (good.ready, good.probe_message) == (True, "HTTP 200")
    assert sick.ready is False and sick.probe_message == "HTTP 503"
    assert plain.ready is True and "no readiness probe" in plain.probe_message
    # the observation it started from is left as it was
    assert all(r.ready is None and r.probe_message == "" for r in live.replicas())
    assert assessed.nodes == live.nodes and assessed.observed_at == live.observed_at


def test_stopped_replica_is_not_ready_without_probing(
    process_node: LiveNodeKit, cluster: str, store: StateStore
) -> None:
    api = load_services(process_node.api("api", replicas=1))["api"]
    (instance,) = start_replicas(process_node.runtime, api, cluster)
    record_rollout(store, api)
    process_node.runtime.stop(instance.id, grace_seconds=2.0)
    runtimes = {process_node.name: process_node.runtime}

    assessed = assess_readiness(observe([process_node.target], runtimes, cluster, store), runtimes)

    (replica,) = assessed.services["api"].replicas
    assert (replica.state, replica.ready) == ("exited", False)


@pytest.mark.docker
def test_node_down_after_observation_gives_unknown_readiness(
    docker_node: LiveNodeKit, cluster: str, store: StateStore
) -> None:
    """Observed while the engine answered, probed after it went away: ready is None
    (not known), never False (which would make a reconciler replace healthy replicas)."""
    api = load_services(docker_node.api("api", replicas=2))["api"]
    start_replicas(docker_node.runtime, api, cluster)
    record_rollout(store, api)
    live = observe([docker_node.target], {docker_node.name: docker_node.runtime}, cluster, store)
    gone = DockerRuntime(docker_node.name, closed_tcp_endpoint(), timeout=5.0)

    assessed = assess_readiness(live, {docker_node.name: gone})

    replicas = assessed.services["api"].replicas
    assert len(replicas) == 2
    assert all(r.ready is None for r in replicas)
    assert all(r.probe_message for r in replicas), "says why readiness is unknown"
    # a node missing from the runtimes altogether is no better known
    assert all(r.ready is None for r in assess_readiness(live, {}).replicas())


def test_live_state_is_immutable(
    process_node: LiveNodeKit, cluster: str, store: StateStore
) -> None:
    web = load_services(process_node.idle("web", replicas=1))["web"]
    start_replicas(process_node.runtime, web, cluster)
    record_rollout(store, web)
    live = observe([process_node.target], {process_node.name: process_node.runtime}, cluster, store)
    service = live.services["web"]
    replica = service.replicas[0]
    node = live.nodes[process_node.name]
    assert service.applied is not None

    for obj, attr in (
        (live, "services"),
        (live, "last_applied_revision"),
        (node, "ready"),
        (service, "replicas"),
        (service.applied, "phase"),
        (replica, "ready"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, None)
    with pytest.raises(TypeError):
        live.services["other"] = service  # type: ignore[index]
    with pytest.raises(TypeError):
        live.nodes["other"] = node  # type: ignore[index]
    with pytest.raises(TypeError):
        node.labels["x"] = "y"  # type: ignore[index]
    assert isinstance(service.replicas, tuple)
