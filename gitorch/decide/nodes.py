"""Nodes as a pass decides over them: the one place that builds the scheduler's views.

Pure. The verdicts (which nodes are lost, cordoned, which replicas must move) come from
the node records and the live state; :class:`gitorch.apply.nodes.NodeTracker` keeps the
clock and the records of silent nodes, ``gitorch plan`` reads the same records.

Draining (``gitorch drain NODE`` or ``spec.drain`` in Git) and NoExecute taints a service
does not tolerate mark replicas for eviction: the strategy treats them like replicas of an
old version, so replacements start elsewhere before they stop, within maxSurge and
maxUnavailable. Cordoned nodes (``unschedulable``, draining) get nothing new.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from gitorch.live.model import LiveReplica, LiveService, LiveState
from gitorch.manifests.build import priority_and_qos_of, requests_of
from gitorch.manifests.model import DesiredState
from gitorch.scheduler import NodeView, Running
from gitorch.scheduler.evict import evictions


@dataclass(frozen=True)
class NodeVerdicts:
    lost: frozenset[str] = frozenset()  # silent longer than the grace: replicas replaced
    cordoned: frozenset[str] = frozenset()  # place nothing new here
    evicting: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({})
    )  # replica id -> why it moves
    #: Replicas of a node that came back after it was lost (their slots were filled
    #: elsewhere): evicted, and draining in every routing table, so they never serve.
    stale: frozenset[str] = frozenset()


def node_views(
    live: LiveState,
    *,
    cordoned: Collection[str] = (),
    runnable: Collection[str] | None = None,
) -> list[NodeView]:
    """The scheduler's view of every node (``runnable``: only nodes with a runtime)."""
    return [
        NodeView(
            n.name,
            n.cpu_millis,
            n.memory_bytes,
            n.labels,
            n.ready,
            n.unschedulable or n.name in cordoned,
            n.taints,
            driver=n.driver,
        )
        for n in live.nodes.values()
        if runnable is None or n.name in runnable
    ]


def running_replicas(
    live: LiveState, *, skip_services: Collection[str] = (), skip_ids: Collection[str] = ()
) -> list[tuple[Running, LiveReplica]]:
    """Every running replica as the scheduler counts it (requests, priority, QoS from the
    spec its service last applied)."""
    found: list[tuple[Running, LiveReplica]] = []
    for name, service in live.services.items():
        if name in skip_services:
            continue
        canonical = service.applied.canonical if service.applied else None
        cpu, mem = requests_of(canonical)
        priority, qos = priority_and_qos_of(canonical)
        for replica in service.replicas:
            if replica.state == "running" and replica.id not in skip_ids:
                found.append(
                    (Running(name, replica.replica, replica.node, cpu, mem, priority, qos), replica)
                )
    return found


def verdicts(
    live: LiveState,
    desired: DesiredState,
    *,
    lost: Iterable[str] = (),
    draining: Iterable[str] = (),
    unschedulable: Iterable[str] = (),
) -> NodeVerdicts:
    """What the node situation means for this pass: nodes ``draining`` (drain in Git, or
    ``gitorch drain``) and ``unschedulable`` get nothing new; replicas on draining nodes
    and on NoExecute-tainted nodes they do not tolerate move."""
    draining = set(draining)
    cordoned = set(unschedulable) | draining
    evicting = {
        r.id: f"node {r.node} is draining"
        for r in live.replicas()
        if r.node in draining and r.state == "running"
    }
    evicting.update(_untolerated(live, desired))
    return NodeVerdicts(frozenset(lost), frozenset(cordoned), MappingProxyType(evicting))


def _untolerated(live: LiveState, desired: DesiredState) -> dict[str, str]:
    tainted = {
        n.name
        for n in live.nodes.values()
        if any(effect == "NoExecute" for _, _, effect in n.taints)
    }
    if not tainted:
        return {}
    nodes = [view for view in node_views(live) if view.name in tainted]
    running = [
        Running(r.service, r.replica, r.node) for r in live.replicas() if r.state == "running"
    ]
    placements = {name: svc.placement for name, svc in desired.services.items()}
    by_key = {(r.service, r.replica, r.node): r.id for r in live.replicas()}
    return {
        by_key[(service, replica, node)]: f"{reason} is not tolerated"
        for service, replica, node, reason in evictions(nodes, running, placements)
        if (service, replica, node) in by_key
    }


def lost_nodes(live: LiveState, now: float, grace: float) -> frozenset[str]:
    """Nodes that do not answer and were last seen (per the store) over ``grace`` ago:
    what a reader without the daemon's memory (``gitorch plan``) can tell."""
    return frozenset(
        name
        for name, node in live.nodes.items()
        if not node.ready and now - live.node_last_seen.get(name, float("-inf")) >= grace
    )


def with_held_replicas(live: LiveState, held: Mapping[str, tuple[LiveReplica, ...]]) -> LiveState:
    """The live state plus the last known replicas of silent nodes, marked unknown: they
    keep their slots (never two copies) until their node is lost."""
    if not held:
        return live
    services = dict(live.services)
    for replicas in held.values():
        for replica in replicas:
            unknown = replace(replica, state="unknown", ready=None)
            service = services.get(replica.service) or LiveService(replica.service, None)
            services[replica.service] = replace(service, replicas=(*service.replicas, unknown))
    return replace(live, services=MappingProxyType(services))
