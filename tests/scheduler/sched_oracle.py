"""A slow, obviously-correct scheduler: the specification the fast one must match.

Every placement scans every node and recomputes every count from scratch (O(nodes^2)
per placement with spread), exactly as the first version of gitorch's scheduler did;
property tests compare :func:`gitorch.scheduler.schedule` against it (no preemption).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from gitorch.manifests.quantities import format_cpu, human_memory
from gitorch.scheduler import LEAST_ALLOCATED, Decision, NodeView, Request, Running
from gitorch.scheduler.tolerations import tolerates


class Cluster:
    def __init__(self, nodes: Sequence[NodeView], running: Iterable[Running]) -> None:
        self.nodes = sorted(nodes, key=lambda n: n.name)
        self.cpu_used: Counter[str] = Counter()
        self.mem_used: Counter[str] = Counter()
        self.per_node: dict[str, Counter[str]] = {n.name: Counter() for n in self.nodes}
        for r in running:
            self.add(r.service, r.node, r.cpu_millis, r.memory_bytes)

    def add(self, service: str, node: str, cpu: int, memory: int) -> None:
        if node not in self.per_node:
            return
        self.cpu_used[node] += cpu
        self.mem_used[node] += memory
        self.per_node[node][service] += 1

    def remove(self, service: str, node: str, cpu: int, memory: int) -> None:
        self.cpu_used[node] -= cpu
        self.mem_used[node] -= memory
        self.per_node[node][service] -= 1

    def count_in_domain(self, service: str, key: str, value: str | None) -> int:
        if value is None:
            return 0
        return sum(self.per_node[n.name][service] for n in self.nodes if n.topology(key) == value)


def reject(c: Cluster, node: NodeView, req: Request) -> str | None:
    p = req.placement
    if not node.ready:
        return "NotReady"
    if node.unschedulable:
        return "cordoned (unschedulable)"
    for key, value in p.node_selector.items():
        if node.labels.get(key) != value:
            return f"nodeSelector {key}={value} not matched"
    for key, value, effect in node.taints:
        if effect in ("NoSchedule", "NoExecute") and not tolerates(
            p.tolerations, key, value, effect
        ):
            return f"taint {key}={value}:{effect}" if value else f"taint {key}:{effect}"
    free_cpu = node.cpu_millis - c.cpu_used[node.name]
    if req.cpu_millis > free_cpu:
        return f"insufficient cpu (needs {format_cpu(req.cpu_millis)}, free {format_cpu(max(0, free_cpu))})"
    free_mem = node.memory_bytes - c.mem_used[node.name]
    if req.memory_bytes > free_mem:
        return (
            f"insufficient memory (needs {human_memory(req.memory_bytes)}, "
            f"free {human_memory(max(0, free_mem))})"
        )
    if p.max_per_node and c.per_node[node.name][req.service] >= p.max_per_node:
        return f"maxPerNode {p.max_per_node} reached"
    for t in p.service_anti_affinity:
        if t.required and c.count_in_domain(
            t.service, t.topology_key, node.topology(t.topology_key)
        ):
            return f"anti-affinity with {t.service} ({t.topology_key})"
    for t in p.service_affinity:
        if not t.required or not any(c.per_node[n.name][t.service] for n in c.nodes):
            continue
        if not c.count_in_domain(t.service, t.topology_key, node.topology(t.topology_key)):
            return f"affinity: no {t.service} in the same {t.topology_key}"
    for s in p.spread:
        if s.when_unsatisfiable != "DoNotSchedule":
            continue
        domain = node.topology(s.topology_key)
        if domain is None:
            return f"no {s.topology_key} label for spread"
        counts: dict[str, int] = {}
        for n in c.nodes:
            value = n.topology(s.topology_key)
            if value is None or not n.ready or n.unschedulable:
                continue
            if any(n.labels.get(k) != v for k, v in p.node_selector.items()):
                continue
            counts[value] = counts.get(value, 0) + c.per_node[n.name][req.service]
        if counts.get(domain, 0) + 1 - min(counts.values(), default=0) > s.max_skew:
            return f"spread over {s.topology_key} would exceed maxSkew {s.max_skew}"
    return None


def score(c: Cluster, node: NodeView, req: Request, strategy: str) -> int:
    """In millionths of a point, as the fast scheduler scores."""
    p = req.placement
    cpu_free = (node.cpu_millis - c.cpu_used[node.name] - req.cpu_millis) / max(1, node.cpu_millis)
    mem_free = (node.memory_bytes - c.mem_used[node.name] - req.memory_bytes) / max(
        1, node.memory_bytes
    )
    free = round(50_000_000 * (cpu_free + mem_free))
    points = 0
    for pref in p.node_affinity:
        if all(node.labels.get(k) == v for k, v in pref.match.items()):
            points += pref.weight
    for t in p.service_affinity:
        if not t.required and c.count_in_domain(
            t.service, t.topology_key, node.topology(t.topology_key)
        ):
            points += t.weight
    for t in p.service_anti_affinity:
        if not t.required:
            points -= t.weight * c.count_in_domain(
                t.service, t.topology_key, node.topology(t.topology_key)
            )
    for key, value, effect in node.taints:
        if effect == "PreferNoSchedule" and not tolerates(p.tolerations, key, value, effect):
            points -= 50
    for s in p.spread:
        if s.when_unsatisfiable == "ScheduleAnyway":
            points -= 10 * c.count_in_domain(
                req.service, s.topology_key, node.topology(s.topology_key)
            )
    points -= 5 * c.per_node[node.name][req.service]
    base = free if strategy == LEAST_ALLOCATED else 100_000_000 - free
    return base + 1_000_000 * points


def schedule(
    nodes: Sequence[NodeView],
    running: Iterable[Running],
    requests: Sequence[Request],
    *,
    strategy: str = LEAST_ALLOCATED,
) -> list[Decision]:
    c = Cluster(nodes, running)
    out: list[Decision] = []
    for req in requests:
        best: NodeView | None = None
        best_score = 0
        reasons: list[str] = []
        for node in c.nodes:
            why = reject(c, node, req)
            if why is not None:
                reasons.append(f"{node.name}: {why}")
                continue
            s = score(c, node, req, strategy)
            if best is None or s > best_score:
                best, best_score = node, s
        if best is None:
            out.append(Decision(req.service, req.replica, None, tuple(reasons or ["no nodes"])))
            continue
        c.add(req.service, best.name, req.cpu_millis, req.memory_bytes)
        out.append(Decision(req.service, req.replica, best.name))
    return out
