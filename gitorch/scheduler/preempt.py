"""Preemption: make room for a request that fits nowhere by evicting lower replicas.

Only replicas that were running before the ``schedule()`` call can be victims (never one
placed earlier in the same call), and only those of strictly lower priority than the
request. At equal priority BestEffort goes before Burstable before Guaranteed.

Per node (one that passes the static filters: ready, not cordoned, nodeSelector, taints),
the victims are chosen as:

1. a single victim if one suffices, the least important first;
2. otherwise kube-scheduler's rule: evict every candidate; if the request still does not
   pass every filter, the node is out; else *reprieve* candidates one by one, the most
   important first, keeping each whose return still lets the request fit. The result is
   minimal (no victim can be spared), not always the minimum, which would need a search
   over subsets.

Across nodes: fewest victims, then the lowest most-important victim, then node name.
"""

from __future__ import annotations

from collections.abc import Sequence

from gitorch.scheduler.model import QOS_RANK, Request, Running
from gitorch.scheduler.shape import Shape, reject
from gitorch.scheduler.state import ClusterState


def importance(replica: Running) -> tuple[int, int]:
    """Higher is kept longer: priority, then QoS class."""
    return replica.priority, QOS_RANK.get(replica.qos_class, 1)


def _fits_without(state: ClusterState, shape: Shape, i: int, victims: Sequence[Running]) -> bool:
    for v in victims:
        state.remove(v.service, i, v.cpu_millis, v.memory_bytes)
    try:
        return reject(state, shape, i) is None
    finally:
        for v in victims:
            state.add(v.service, i, v.cpu_millis, v.memory_bytes)


def _victims_on(state: ClusterState, shape: Shape, req: Request, i: int) -> list[Running] | None:
    pool = sorted(
        (r for r in state.running_on.get(i, ()) if r.priority < req.priority),
        key=lambda r: (importance(r), r.service, r.replica),
    )
    if not pool:
        return None
    for v in pool:
        if _fits_without(state, shape, i, [v]):
            return [v]
    if not _fits_without(state, shape, i, pool):
        return None
    chosen = list(pool)
    for v in reversed(pool):  # the most important first: spare it if we can
        rest = [r for r in chosen if r is not v]
        if _fits_without(state, shape, i, rest):
            chosen = rest
    return chosen


def find_victims(
    state: ClusterState, shape: Shape, req: Request
) -> tuple[int, list[Running]] | None:
    """The node and victims that let ``req`` fit, or None if no eviction helps."""
    best: tuple[tuple[int, tuple[int, int], str], int, list[Running]] | None = None
    for i, node in enumerate(state.nodes):
        if shape.static_reason[i] is not None or i not in state.running_on:
            continue
        victims = _victims_on(state, shape, req, i)
        if victims is None:
            continue
        rank = (len(victims), max(importance(v) for v in victims), node.name)
        if best is None or rank < best[0]:
            best = (rank, i, victims)
    return None if best is None else (best[1], best[2])


def evict(state: ClusterState, i: int, victims: Sequence[Running]) -> None:
    """Remove ``victims`` from node ``i`` for good (they can be victims only once)."""
    for v in victims:
        state.remove(v.service, i, v.cpu_millis, v.memory_bytes)
        state.running_on[i].remove(v)
