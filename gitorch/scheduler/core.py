"""Placement: filters say where a replica may go (and why not), scores say where it should.

Pure and deterministic: the same nodes, running replicas and requests always give the
same placements (ties broken by node name), so ``plan`` shows exactly what ``apply`` does.
Replicas are placed one at a time, each placement counting against the next, as
kube-scheduler does.

Filters (a node failing one is out, with a reason): NotReady, cordoned, nodeSelector,
untolerated NoSchedule/NoExecute taints, cpu and memory requests vs allocatable,
maxPerNode, required service affinity and anti-affinity by topologyKey, spread with
DoNotSchedule. Scores: least-allocated (default) or most-allocated, preferred node
affinity, preferred service (anti-)affinity, PreferNoSchedule taints and ScheduleAnyway
spread as penalties.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from gitorch.manifests.model import Placement, Toleration
from gitorch.manifests.quantities import format_cpu, human_memory

LEAST_ALLOCATED = "LeastAllocated"
MOST_ALLOCATED = "MostAllocated"


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

    def topology(self, key: str) -> str | None:
        """The node's value for a topology key (``node`` is the node itself)."""
        return self.name if key == "node" else self.labels.get(key)


@dataclass(frozen=True)
class Running:
    """A replica that already holds resources on a node."""

    service: str
    replica: str
    node: str
    cpu_millis: int = 0
    memory_bytes: int = 0


@dataclass(frozen=True)
class Request:
    """A replica to place."""

    service: str
    replica: str
    cpu_millis: int = 0
    memory_bytes: int = 0
    placement: Placement = Placement()


@dataclass(frozen=True)
class Decision:
    service: str
    replica: str
    node: str | None
    reasons: tuple[str, ...] = ()  # why each node was rejected (when node is None)

    @property
    def reason_counts(self) -> dict[str, int]:
        """Nomad-style summary: how many nodes failed for each kind of reason."""
        return dict(Counter(reason.split(": ", 1)[1].split(" (")[0] for reason in self.reasons))


def _tolerates(tolerations: Sequence[Toleration], key: str, value: str, effect: str) -> bool:
    for tol in tolerations:
        if tol.effect not in (None, effect):
            continue
        if tol.operator == "Exists" and tol.key in (None, key):
            return True
        if tol.key == key and (tol.value or "") == value:
            return True
    return False


class _Cluster:
    """Mutable bookkeeping while placing one batch."""

    def __init__(self, nodes: Sequence[NodeView], running: Iterable[Running]) -> None:
        self.nodes = sorted(nodes, key=lambda n: n.name)
        self.by_name = {n.name: n for n in self.nodes}
        self.cpu_used: Counter[str] = Counter()
        self.mem_used: Counter[str] = Counter()
        self.per_node: dict[str, Counter[str]] = {n.name: Counter() for n in self.nodes}
        for replica in running:
            self.add(replica.service, replica.node, replica.cpu_millis, replica.memory_bytes)

    def add(self, service: str, node: str, cpu: int, memory: int) -> None:
        if node not in self.per_node:
            return  # a replica on a node that is gone: holds nothing we can place on
        self.cpu_used[node] += cpu
        self.mem_used[node] += memory
        self.per_node[node][service] += 1

    def count_in_domain(self, service: str, key: str, value: str | None) -> int:
        if value is None:
            return 0
        return sum(self.per_node[n.name][service] for n in self.nodes if n.topology(key) == value)

    def domain_counts(self, service: str, key: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            value = node.topology(key)
            if value is not None:
                counts[value] = counts.get(value, 0) + self.per_node[node.name][service]
        return counts


def _reject(cluster: _Cluster, node: NodeView, req: Request) -> str | None:
    p = req.placement
    if not node.ready:
        return "NotReady"
    if node.unschedulable:
        return "cordoned (unschedulable)"
    for key, value in p.node_selector.items():
        if node.labels.get(key) != value:
            return f"nodeSelector {key}={value} not matched"
    for key, value, effect in node.taints:
        if effect in ("NoSchedule", "NoExecute") and not _tolerates(
            p.tolerations, key, value, effect
        ):
            return f"taint {key}={value}:{effect}" if value else f"taint {key}:{effect}"
    free_cpu = node.cpu_millis - cluster.cpu_used[node.name]
    if req.cpu_millis > free_cpu:
        return f"insufficient cpu (needs {format_cpu(req.cpu_millis)}, free {format_cpu(max(0, free_cpu))})"
    free_mem = node.memory_bytes - cluster.mem_used[node.name]
    if req.memory_bytes > free_mem:
        return (
            f"insufficient memory (needs {human_memory(req.memory_bytes)}, "
            f"free {human_memory(max(0, free_mem))})"
        )
    if p.max_per_node and cluster.per_node[node.name][req.service] >= p.max_per_node:
        return f"maxPerNode {p.max_per_node} reached"
    for term in p.service_anti_affinity:
        if term.required and cluster.count_in_domain(
            term.service, term.topology_key, node.topology(term.topology_key)
        ):
            return f"anti-affinity with {term.service} ({term.topology_key})"
    for term in p.service_affinity:
        if not term.required:
            continue
        if not any(cluster.per_node[n.name][term.service] for n in cluster.nodes):
            continue  # nothing to be near yet: the first replica goes anywhere
        if not cluster.count_in_domain(
            term.service, term.topology_key, node.topology(term.topology_key)
        ):
            return f"affinity: no {term.service} in the same {term.topology_key}"
    for spread in p.spread:
        if spread.when_unsatisfiable != "DoNotSchedule":
            continue
        domain = node.topology(spread.topology_key)
        if domain is None:
            return f"no {spread.topology_key} label for spread"
        counts = _eligible_domain_counts(cluster, req, spread.topology_key)
        after = counts.get(domain, 0) + 1
        if after - min(counts.values(), default=0) > spread.max_skew:
            return f"spread over {spread.topology_key} would exceed maxSkew {spread.max_skew}"
    return None


def _eligible_domain_counts(cluster: _Cluster, req: Request, key: str) -> dict[str, int]:
    """Per-domain replica counts over nodes that pass the node-level filters (as
    kube-scheduler's PodTopologySpread does, so an unusable zone does not block spread)."""
    counts: dict[str, int] = {}
    p = req.placement
    for node in cluster.nodes:
        value = node.topology(key)
        if value is None or not node.ready or node.unschedulable:
            continue
        if any(node.labels.get(k) != v for k, v in p.node_selector.items()):
            continue
        counts[value] = counts.get(value, 0) + cluster.per_node[node.name][req.service]
    return counts


def _score(cluster: _Cluster, node: NodeView, req: Request, strategy: str) -> float:
    p = req.placement
    cpu_free = (node.cpu_millis - cluster.cpu_used[node.name] - req.cpu_millis) / max(
        1, node.cpu_millis
    )
    mem_free = (node.memory_bytes - cluster.mem_used[node.name] - req.memory_bytes) / max(
        1, node.memory_bytes
    )
    free = (cpu_free + mem_free) / 2
    score = 100 * (free if strategy == LEAST_ALLOCATED else 1 - free)
    for pref in p.node_affinity:
        if all(node.labels.get(k) == v for k, v in pref.match.items()):
            score += pref.weight
    for term in p.service_affinity:
        if not term.required and cluster.count_in_domain(
            term.service, term.topology_key, node.topology(term.topology_key)
        ):
            score += term.weight
    for term in p.service_anti_affinity:
        if not term.required:
            score -= term.weight * cluster.count_in_domain(
                term.service, term.topology_key, node.topology(term.topology_key)
            )
    for key, value, effect in node.taints:
        if effect == "PreferNoSchedule" and not _tolerates(p.tolerations, key, value, effect):
            score -= 50
    for spread in p.spread:
        if spread.when_unsatisfiable == "ScheduleAnyway":
            score -= 10 * cluster.count_in_domain(
                req.service, spread.topology_key, node.topology(spread.topology_key)
            )
    # Spread a service's replicas over nodes by default, as kube-scheduler's
    # SelectorSpread does: the fewer of this service on the node, the better.
    score -= 5 * cluster.per_node[node.name][req.service]
    return score


def schedule(
    nodes: Sequence[NodeView],
    running: Iterable[Running],
    requests: Sequence[Request],
    *,
    strategy: str = LEAST_ALLOCATED,
) -> list[Decision]:
    """Place ``requests`` in order; each placement counts against the next."""
    cluster = _Cluster(nodes, running)
    decisions: list[Decision] = []
    for req in requests:
        best: NodeView | None = None
        best_score = float("-inf")
        reasons: list[str] = []
        for node in cluster.nodes:
            why = _reject(cluster, node, req)
            if why is not None:
                reasons.append(f"{node.name}: {why}")
                continue
            score = _score(cluster, node, req, strategy)
            if score > best_score:  # strict: the first (by name) wins ties
                best, best_score = node, score
        if best is None:
            decisions.append(
                Decision(req.service, req.replica, None, tuple(reasons or ["no nodes"]))
            )
            continue
        cluster.add(req.service, best.name, req.cpu_millis, req.memory_bytes)
        decisions.append(Decision(req.service, req.replica, best.name))
    return decisions
