"""Nodes as the reconciler sees them: lost after a grace period, cordoned, drained, tainted.

A node that stops answering is NotReady at once, but its replicas are only *unknown*:
they keep their slots (no second copy starts) until the node has been silent for the
grace period. Then the node is lost and its replicas' slots are filled elsewhere, through
the service's normal strategy, so capacity and availability rules hold. When the node
answers again, its stale replicas reappear as extra copies of filled slots and the
strategy removes them.

Draining (``gitorch drain NODE`` or ``spec.drain`` in Git) and NoExecute taints a service
does not tolerate mark replicas for eviction: the strategy treats them like replicas of an
old version, so replacements start elsewhere before they stop, within maxSurge and
maxUnavailable. Cordoned nodes (``unschedulable``, draining) get nothing new.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from gitorch.live import NodeTarget
from gitorch.live.model import LiveReplica, LiveService, LiveState
from gitorch.manifests.model import DesiredState
from gitorch.scheduler import NodeView, Running
from gitorch.scheduler.evict import evictions
from gitorch.state import NodeCondition, NodeRecord, StateStore

#: Prefix given to the template of a replica being moved off its node: the strategy then
#: replaces it like a replica of an older version.
EVICTED = "evicted:"

#: Seconds between two writes of a Ready node's last-seen time. The tracker keeps the
#: exact time in memory; the store's copy (for `gitorch nodes`, and for a restarted
#: daemon) lags at most this much, so a restart can take at most this off a node's grace.
#: Writing it on every pass cost one SQLite write per node per pass.
SEEN_WRITE_EVERY = 10.0


@dataclass(frozen=True)
class NodeVerdicts:
    lost: frozenset[str] = frozenset()  # silent longer than the grace: replicas replaced
    cordoned: frozenset[str] = frozenset()  # place nothing new here
    evicting: Mapping[str, str] = field(default_factory=dict)  # replica id -> why it moves


class NodeTracker:
    """Remembers what each node ran, and turns observations into verdicts."""

    def __init__(
        self, store: StateStore, *, grace: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.grace = grace
        self.clock = clock
        self._seen: dict[str, tuple[LiveReplica, ...]] = {}  # node -> its replicas, last answer
        self._last_seen: dict[str, float] = {}  # node -> when it last answered (this daemon)

    def update(
        self, live: LiveState, targets: Sequence[NodeTarget], desired: DesiredState
    ) -> tuple[LiveState, NodeVerdicts]:
        now = self.clock()
        records = {r.name: r for r in self.store.list_nodes()}
        lost: set[str] = set()
        for name, node in live.nodes.items():
            record = records.get(name)
            if node.ready:
                self._last_seen[name] = now
                if _stale(record, now):
                    self.store.update_node_condition(name, NodeCondition.READY, seen=True, at=now)
                self._seen[name] = tuple(r for r in live.replicas() if r.node == name)
                continue
            if (
                record is None
                or record.condition != NodeCondition.NOT_READY
                or record.message != node.message
            ):
                self.store.update_node_condition(
                    name, NodeCondition.NOT_READY, message=node.message, seen=False
                )
            stored = record.last_seen if record is not None else None
            heard = [t for t in (self._last_seen.get(name), stored) if t is not None]
            if not heard or now - max(heard) >= self.grace:
                lost.add(name)
        draining = {t.name for t in targets if t.drain} | {
            n for n, r in records.items() if r.draining
        }
        cordoned = {t.name for t in targets if t.unschedulable} | draining
        held = {
            name: replicas
            for name, replicas in self._seen.items()
            if name in live.nodes and not live.nodes[name].ready and name not in lost
        }
        augmented = _with_held_replicas(live, held)
        evicting = {
            r.id: f"node {r.node} is draining"
            for r in augmented.replicas()
            if r.node in draining and r.state == "running"
        }
        evicting.update(self._untolerated(augmented, desired))
        return augmented, NodeVerdicts(
            frozenset(lost), frozenset(cordoned), MappingProxyType(evicting)
        )

    @staticmethod
    def _untolerated(live: LiveState, desired: DesiredState) -> dict[str, str]:
        nodes = [
            NodeView(
                n.name, n.cpu_millis, n.memory_bytes, n.labels, n.ready, n.unschedulable, n.taints
            )
            for n in live.nodes.values()
            if any(effect == "NoExecute" for _, _, effect in n.taints)
        ]
        if not nodes:
            return {}
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


def _stale(record: NodeRecord | None, now: float) -> bool:
    """Whether a Ready node's stored record needs writing: unknown, another condition or
    message, or a last-seen time older than :data:`SEEN_WRITE_EVERY`."""
    if record is None or record.condition != NodeCondition.READY:
        return True
    if record.message or record.last_seen is None:
        return True
    return now - record.last_seen >= SEEN_WRITE_EVERY


def _with_held_replicas(live: LiveState, held: Mapping[str, tuple[LiveReplica, ...]]) -> LiveState:
    """The live state plus the last known replicas of silent nodes, marked unknown."""
    if not held:
        return live
    services = dict(live.services)
    for replicas in held.values():
        for replica in replicas:
            unknown = replace(replica, state="unknown", ready=None)
            service = services.get(replica.service) or LiveService(replica.service, None)
            services[replica.service] = replace(service, replicas=(*service.replicas, unknown))
    return replace(live, services=MappingProxyType(services))
