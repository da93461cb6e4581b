"""What the scheduler reads and returns: nodes, running replicas, requests, decisions.

Reasons are plain strings ``"<node>: <why>"``; :func:`reason_kind` maps one to its stable
kind (the text before any parenthesised figures), which :attr:`Decision.reason_counts`
counts per kind as Nomad's placement failures do. The kinds are:

``NotReady``, ``cordoned``, ``nodeSelector K=V not matched``, ``taint K=V:EFFECT`` (or
``taint K:EFFECT``), ``insufficient cpu``, ``insufficient memory``, ``maxPerNode N reached``,
``anti-affinity with SERVICE``, ``affinity: no SERVICE in the same KEY``,
``no KEY label for spread``, ``spread over KEY would exceed maxSkew N``, ``driver D cannot
run it``, ``ReadWriteOnce volume V is bound to node N`` and ``no nodes``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType

from gitorch.manifests.model import Placement

LEAST_ALLOCATED = "LeastAllocated"
MOST_ALLOCATED = "MostAllocated"

#: Eviction order at equal priority, first evicted first (Kubernetes' QoS classes).
QOS_RANK = {"BestEffort": 0, "Burstable": 1, "Guaranteed": 2}


def _derived_qos(cpu_millis: int, memory_bytes: int) -> str:
    # Without limits we only know the requests: some requests make it Burstable.
    return "Burstable" if cpu_millis or memory_bytes else "BestEffort"


@dataclass(frozen=True)
class NodeView:
    """A node as the scheduler sees it."""

    name: str
    cpu_millis: int
    memory_bytes: int
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    ready: bool = True
    unschedulable: bool = False
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect)
    driver: str = ""  # docker | process ("" : unknown, runs anything)

    def topology(self, key: str) -> str | None:
        """The node's value for a topology key (``node`` is the node itself)."""
        return self.name if key == "node" else self.labels.get(key)


@dataclass(frozen=True)
class Running:
    """A replica that already holds resources on a node.

    ``priority`` and ``qos`` matter only for preemption; an empty ``qos`` is derived from
    the requests (Burstable with any, BestEffort without).
    """

    service: str
    replica: str
    node: str
    cpu_millis: int = 0
    memory_bytes: int = 0
    priority: int = 0
    qos: str = ""

    @property
    def qos_class(self) -> str:
        """Guaranteed, Burstable or BestEffort."""
        return self.qos or _derived_qos(self.cpu_millis, self.memory_bytes)


@dataclass(frozen=True)
class Request:
    """A replica to place. Its priority is ``placement.priority``; ``qos`` is the
    Service's ``resources.qos_class`` (derived from the requests when empty)."""

    service: str
    replica: str
    cpu_millis: int = 0
    memory_bytes: int = 0
    placement: Placement = Placement()
    qos: str = ""
    # Node drivers that can run it (empty: any). A Service with only ``image`` cannot
    # run on the process driver, one with only ``command`` not on docker.
    drivers: frozenset[str] = frozenset()
    # The only nodes it may go to (empty: any), and why, in words: a ReadWriteOnce volume
    # it mounts is bound to one node ("ReadWriteOnce volume data is bound to node-a").
    nodes: frozenset[str] = frozenset()
    nodes_reason: str = ""

    @property
    def priority(self) -> int:
        """Higher may preempt lower when nothing fits."""
        return self.placement.priority

    @property
    def qos_class(self) -> str:
        """Guaranteed, Burstable or BestEffort."""
        return self.qos or _derived_qos(self.cpu_millis, self.memory_bytes)


def reason_kind(reason: str) -> str:
    """The stable kind of one reason: ``"b: insufficient memory (needs 1Gi, free 0)"``
    -> ``"insufficient memory"``; ``"c: cordoned (unschedulable)"`` -> ``"cordoned"``."""
    _, sep, why = reason.partition(": ")
    return (why if sep else reason).split(" (", 1)[0]


@dataclass(frozen=True)
class Decision:
    """Where one request goes (``node``), or why it goes nowhere (``reasons``, one per
    node). ``victims`` lists the running replicas ``(service, replica, node)`` that must
    be evicted first when the placement preempts."""

    service: str
    replica: str
    node: str | None
    reasons: tuple[str, ...] = ()  # why each node was rejected (when node is None)
    victims: tuple[tuple[str, str, str], ...] = ()

    @property
    def reason_counts(self) -> dict[str, int]:
        """Nomad-style summary: how many nodes failed for each kind of reason."""
        return dict(_counts_of(self.reasons))


@lru_cache(maxsize=1024)
def _counts_of(reasons: tuple[str, ...]) -> Mapping[str, int]:
    # Replicas that fit nowhere mostly share their reasons (every replica of a service,
    # often every service): counted once per distinct tuple (callers get a copy).
    return MappingProxyType(dict(Counter(reason_kind(reason) for reason in reasons)))
