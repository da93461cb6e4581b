"""A request's shape: what filters and scores need, classified once per distinct shape.

Replicas of one service with the same resources and placement share a shape, so the
static work (nodeSelector, taints, node-affinity bonuses, which nodes have the spread
labels) is done once for the whole batch and reused. Terms are split by what they depend
on: the node alone (resources, maxPerNode, ``topologyKey: node``) or a wider domain
(``zone``...), which the placement heaps (:mod:`.group`) evaluate once per domain.

:func:`reject` is the full filter chain for one node, in the order reasons are reported
(the first failing filter names the reason).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from gitorch.manifests.model import Placement
from gitorch.manifests.quantities import format_cpu, human_memory
from gitorch.scheduler.model import NodeView, Request
from gitorch.scheduler.state import ClusterState, SelectorKey, SpreadCounter
from gitorch.scheduler.tolerations import HARD_EFFECTS, taint_text, tolerates

#: A score is in millionths of a point: exact integers, so sums never depend on order.
POINT = 1_000_000


def placement_key(placement: Placement) -> Hashable:
    """A hashable stand-in for a Placement (its mappings are not hashable). The
    nodeSelector keeps its order: the first unmatched key names the reason."""
    return (
        tuple(placement.node_selector.items()),
        tuple((w.weight, tuple(w.match.items())) for w in placement.node_affinity),
        placement.service_anti_affinity,
        placement.service_affinity,
        placement.spread,
        placement.tolerations,
        placement.max_per_node,
        placement.priority,
    )


def _static_reason(
    node: NodeView,
    placement: Placement,
    drivers: frozenset[str] = frozenset(),
    only: frozenset[str] = frozenset(),
    only_reason: str = "",
) -> str | None:
    if only and node.name not in only:
        return only_reason or f"not one of {', '.join(sorted(only))}"
    if not node.ready:
        return "NotReady"
    if node.unschedulable:
        return "cordoned (unschedulable)"
    if drivers and node.driver and node.driver not in drivers:
        needs = " or ".join(sorted(drivers))
        return f"driver {node.driver} cannot run it (it needs {needs})"
    for key, value in placement.node_selector.items():
        if node.labels.get(key) != value:
            return f"nodeSelector {key}={value} not matched"
    for key, value, effect in node.taints:
        if effect in HARD_EFFECTS and not tolerates(placement.tolerations, key, value, effect):
            return taint_text(key, value, effect)
    return None


def _static_points(node: NodeView, placement: Placement) -> int:
    points = 0
    for pref in placement.node_affinity:
        if all(node.labels.get(k) == v for k, v in pref.match.items()):
            points += pref.weight
    for key, value, effect in node.taints:
        if effect == "PreferNoSchedule" and not tolerates(
            placement.tolerations, key, value, effect
        ):
            points -= 50
    return points


@dataclass
class Shape:
    """Everything about a request that does not change between its replicas."""

    service: str
    cpu: int
    memory: int
    placement: Placement
    selector: SelectorKey
    static_reason: list[str | None]  # per node: NotReady, cordon, nodeSelector, taint
    static_points: list[int]  # per node: node affinity, PreferNoSchedule
    candidates: list[int]  # nodes passing the static filters and having the spread labels
    # node-local terms
    anti_on_node: tuple[str, ...]  # required anti-affinity services, topologyKey node
    prefer_on_node: tuple[tuple[str, int], ...]  # preferred affinity (service, weight)
    avoid_on_node: tuple[tuple[str, int], ...]  # preferred anti-affinity (service, weight)
    own_penalty: int  # points per replica of this service already on the node
    # domain terms (topologyKey other than node, or node for required affinity)
    domain_keys: tuple[str, ...]
    anti_in_domain: tuple[tuple[str, str], ...]
    affinity_in_domain: tuple[tuple[str, str], ...]
    spread_hard: tuple[tuple[str, int, SpreadCounter], ...]  # (key, maxSkew, counter)
    prefer_in_domain: tuple[tuple[str, str, int], ...]
    avoid_in_domain: tuple[tuple[str, str, int], ...]
    spread_soft_in_domain: tuple[str, ...]
    hard_skews: tuple[tuple[str, int], ...] = ()  # (key, maxSkew) of spread_hard


class ShapeCache:
    """Shapes and their static per-node results, computed once per distinct input."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._keys: dict[int, tuple[Placement, Hashable]] = {}
        self._shapes: dict[Hashable, Shape] = {}
        self._reasons: dict[Hashable, list[str | None]] = {}
        self._points: dict[Hashable, list[int]] = {}
        self._common: dict[Hashable, Shape] = {}

    def _placement_key(self, placement: Placement) -> Hashable:
        # Replicas of one service share one Placement object: key it by identity first
        # (keeping the object alive so the id is not reused).
        known = self._keys.get(id(placement))
        if known is None:
            known = (placement, placement_key(placement))
            self._keys[id(placement)] = known
        return known[1]

    def _common_key(self, req: Request) -> Hashable:
        """Equal keys, equal shapes but for the service."""
        return (
            req.cpu_millis,
            req.memory_bytes,
            self._placement_key(req.placement),
            req.drivers,
            req.nodes,
            req.nodes_reason,
        )

    def key(self, req: Request) -> tuple[str, Hashable]:
        """Equal keys, equal shapes."""
        return (req.service, self._common_key(req))

    def shape(self, req: Request) -> Shape:
        """The shape of ``req`` (built on first use)."""
        key = self.key(req)
        found = self._shapes.get(key)
        if found is None:
            found = self._build(req, key[1])
            self._shapes[key] = found
        return found

    def _build(self, req: Request, common_key: Hashable) -> Shape:
        # What does not depend on the service is made once per distinct placement (the
        # services of a repo mostly share one), then given the service's own counters.
        common = self._common.get(common_key)
        if common is None:
            common = self._common_shape(req)
            self._common[common_key] = common
        state, p = self.state, req.placement
        soft_keys = {s.topology_key for s in p.spread if s.when_unsatisfiable == "ScheduleAnyway"}
        for key in common.domain_keys:  # make the counters exist before any placement reads them
            for t in p.service_anti_affinity + p.service_affinity:
                if t.topology_key == key:
                    state.domain_counter(t.service, key)
            if key in soft_keys:
                state.domain_counter(req.service, key)
        # dataclasses.replace, without its walk of the fields (a shape per service).
        shape = object.__new__(Shape)
        shape.__dict__.update(common.__dict__)
        shape.service = req.service
        shape.spread_hard = tuple(
            (key, skew, state.spread_counter(req.service, key, common.selector))
            for key, skew in common.hard_skews
        )
        return shape

    def _common_shape(self, req: Request) -> Shape:
        """The shape of ``req`` but for its service (``service`` empty, no spread counter)."""
        state, p = self.state, req.placement
        nodes = state.nodes
        selector: SelectorKey = tuple(p.node_selector.items())
        static_key = (selector, p.tolerations, req.drivers, req.nodes, req.nodes_reason)
        reasons = self._reasons.get(static_key)
        if reasons is None:
            reasons = [
                _static_reason(n, p, req.drivers, req.nodes, req.nodes_reason) for n in nodes
            ]
            self._reasons[static_key] = reasons
        points_key = (
            tuple((w.weight, tuple(w.match.items())) for w in p.node_affinity),
            p.tolerations,
        )
        points = self._points.get(points_key)
        if points is None:
            points = [_static_points(n, p) for n in nodes]
            self._points[points_key] = points

        hard = [s for s in p.spread if s.when_unsatisfiable == "DoNotSchedule"]
        soft = [s for s in p.spread if s.when_unsatisfiable == "ScheduleAnyway"]
        labelled = [state.domains(s.topology_key) for s in hard]
        candidates = [
            i
            for i in range(len(nodes))
            if reasons[i] is None and all(d[i] is not None for d in labelled)
        ]
        anti_req = [t for t in p.service_anti_affinity if t.required]
        anti_pref = [t for t in p.service_anti_affinity if not t.required]
        aff_req = [t for t in p.service_affinity if t.required]
        aff_pref = [t for t in p.service_affinity if not t.required]
        soft_on_node = sum(1 for s in soft if s.topology_key == "node")

        def wide(key: str) -> bool:
            return key != "node"

        domain_keys = sorted(
            {t.topology_key for t in anti_req + anti_pref + aff_pref if wide(t.topology_key)}
            | {t.topology_key for t in aff_req}
            | {s.topology_key for s in hard}
            | {s.topology_key for s in soft if wide(s.topology_key)}
        )
        return Shape(
            service="",
            cpu=req.cpu_millis,
            memory=req.memory_bytes,
            placement=p,
            selector=selector,
            static_reason=reasons,
            static_points=points,
            candidates=candidates,
            anti_on_node=tuple(t.service for t in anti_req if not wide(t.topology_key)),
            prefer_on_node=tuple(
                (t.service, t.weight) for t in aff_pref if not wide(t.topology_key)
            ),
            avoid_on_node=tuple(
                (t.service, t.weight) for t in anti_pref if not wide(t.topology_key)
            ),
            own_penalty=5 + 10 * soft_on_node,
            domain_keys=tuple(domain_keys),
            anti_in_domain=tuple(
                (t.service, t.topology_key) for t in anti_req if wide(t.topology_key)
            ),
            affinity_in_domain=tuple((t.service, t.topology_key) for t in aff_req),
            spread_hard=(),  # its counters are the service's
            hard_skews=tuple((s.topology_key, s.max_skew) for s in hard),
            prefer_in_domain=tuple(
                (t.service, t.topology_key, t.weight) for t in aff_pref if wide(t.topology_key)
            ),
            avoid_in_domain=tuple(
                (t.service, t.topology_key, t.weight) for t in anti_pref if wide(t.topology_key)
            ),
            spread_soft_in_domain=tuple(s.topology_key for s in soft if wide(s.topology_key)),
        )


def reject(state: ClusterState, shape: Shape, i: int) -> str | None:
    """Why node ``i`` cannot take a replica of ``shape`` now (None: it can)."""
    why = shape.static_reason[i]
    if why is not None:
        return why
    p = shape.placement
    free_cpu = state.cpu_alloc[i] - state.cpu_used[i]
    if shape.cpu > free_cpu:
        return (
            f"insufficient cpu (needs {format_cpu(shape.cpu)}, free {format_cpu(max(0, free_cpu))})"
        )
    free_mem = state.mem_alloc[i] - state.mem_used[i]
    if shape.memory > free_mem:
        return (
            f"insufficient memory (needs {human_memory(shape.memory)}, "
            f"free {human_memory(max(0, free_mem))})"
        )
    if p.max_per_node and state.count_on(shape.service, i) >= p.max_per_node:
        return f"maxPerNode {p.max_per_node} reached"
    for t in p.service_anti_affinity:
        if t.required and state.count_in_domain(t.service, t.topology_key, i):
            return f"anti-affinity with {t.service} ({t.topology_key})"
    for t in p.service_affinity:
        if not t.required or not state.total.get(t.service):
            continue  # nothing to be near yet: the first replica goes anywhere
        if not state.count_in_domain(t.service, t.topology_key, i):
            return f"affinity: no {t.service} in the same {t.topology_key}"
    for key, skew, counter in shape.spread_hard:
        domain = state.domains(key)[i]
        if domain is None:
            return f"no {key} label for spread"
        if counter.counts.get(domain, 0) + 1 - counter.min > skew:
            return f"spread over {key} would exceed maxSkew {skew}"
    return None
