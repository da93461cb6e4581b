"""Cluster autoscaling: when a NodePool makes a node, drains one, deletes one. Pure.

The rules are those of Kubernetes' cluster autoscaler, on gitorch's own scheduler:

* **Scale up** when replicas stay unschedulable for ``scaleUp.after`` and a node of the
  pool's template would take them: the replicas the last pass could not place
  (:class:`gitorch.decide.cluster.Unplaced`) are placed again, by the same scheduler, on
  the cluster plus as many template nodes as the pool may still make; the template nodes
  that receive one are the nodes to make (bin packing). Replicas no template node would
  take (a nodeSelector the template lacks, a taint they do not tolerate, more cpu than a
  node has) never make a node: the decision says so. Nodes made after that pass, not yet
  in it, count as template nodes already there (no second node for the same replicas).
* **Scale down** a node requested under ``scaleDown.utilizationBelow`` (the larger of
  cpu and memory requests over capacity) for ``scaleDown.after``, one node at a time per
  pool, never below ``minNodes``, never while replicas wait that one of its nodes would
  take: when its replicas fit on the other nodes, it is drained (``gitorch drain``: its
  replicas move through their services' strategies), and once none is left, deleted.
* **Bounds**: below ``minNodes`` nodes are made at once; never more than ``maxNodes``.

The executor (:mod:`gitorch.apply.nodepools`) calls the provider and records the outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from gitorch.decide.cluster import PassDecision, Unplaced, runnable_drivers
from gitorch.decide.nodes import node_views, running_replicas
from gitorch.live.model import LiveState
from gitorch.manifests.model import POOL_LABEL, DesiredState, NodePool
from gitorch.manifests.quantities import format_cpu, format_memory
from gitorch.scheduler import NodeView, Request, Running, schedule
from gitorch.state.records import NodePoolRecord

#: A pool node's ``state`` in its record.
READY = "ready"
DRAINING = "draining"

#: Decision actions.
CREATE = "create"
DRAIN = "drain"
DELETE = "delete"


@dataclass(frozen=True)
class PoolInput:
    """What one sync decides from: Git's pools, their records, one observation, and the
    replicas the last pass could not place (``pending``, on the nodes ``pass_nodes``)."""

    desired: DesiredState
    records: Mapping[str, NodePoolRecord]
    live: LiveState
    pending: Sequence[Unplaced]
    pass_nodes: frozenset[str]
    now: float


@dataclass(frozen=True)
class PoolDecision:
    """One pool's decision: how many nodes to make, which node to drain, which to delete
    (drained and empty, or gone), and why; ``record``: its memory after this sync (the
    executor adds the nodes it makes and drops those it deletes, once deleted)."""

    pool: str
    record: NodePoolRecord
    create: int = 0
    drain: str | None = None
    delete: tuple[str, ...] = ()
    reason: str = ""
    #: Replicas waiting that no node of this template would take, and why.
    unfit: tuple[str, ...] = ()
    nodes_before: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.create or self.drain or self.delete)

    @property
    def nodes_after(self) -> int:
        return self.nodes_before + self.create - len(self.delete)


@dataclass
class _Pending:
    items: list[Unplaced] = field(default_factory=list)


def template_view(pool: NodePool, name: str) -> NodeView:
    """A node of ``pool``'s template, as the scheduler sees it."""
    return NodeView(
        name,
        pool.capacity.cpu_millis or 0,
        pool.capacity.memory_bytes or 0,
        MappingProxyType({**pool.node_labels, POOL_LABEL: pool.name, "node": name}),
        True,
        False,
        tuple((t.key, t.value or "", t.effect) for t in pool.taints),
        driver="docker",
    )


def utilization(live: LiveState, node: str) -> float | None:
    """The larger of the cpu and memory requested on ``node`` over its capacity (None:
    the node is not observed or has no capacity)."""
    found = live.nodes.get(node)
    if found is None or not found.ready:
        return None
    cpu = mem = 0
    for running, _ in running_replicas(live):
        if running.node == node:
            cpu += running.cpu_millis
            mem += running.memory_bytes
    shares = [
        used / total
        for used, total in ((cpu, found.cpu_millis), (mem, found.memory_bytes))
        if total > 0
    ]
    return max(shares) if shares else None


def describe_template(pool: NodePool) -> str:
    cpu = format_cpu(pool.capacity.cpu_millis or 0)
    mem = format_memory(pool.capacity.memory_bytes or 0)
    return f"a {pool.name} node ({cpu} cpu, {mem})"


def decide_pools(inp: PoolInput) -> list[PoolDecision]:
    """Every pool's decision (Git's pools, and pools that left Git while they still have
    nodes: these are drained and deleted), in name order. A replica that a node of an
    earlier pool takes is not counted again for a later one."""
    pending = _Pending(list(inp.pending))
    decisions: list[PoolDecision] = []
    names = sorted(set(inp.desired.node_pools) | set(inp.records))
    for name in names:
        record = inp.records.get(name) or NodePoolRecord(name, updated_at=inp.now)
        pool = inp.desired.node_pools.get(name)
        if pool is None:
            decisions.append(_retire(inp, record))
            continue
        decisions.append(_decide(inp, pool, record, pending))
    return decisions


def _decide(
    inp: PoolInput, pool: NodePool, record: NodePoolRecord, pending: _Pending
) -> PoolDecision:
    now = inp.now
    nodes = list(record.nodes)
    count = len(nodes)
    deletes = _gone_or_drained(inp.live, nodes)
    if deletes:
        reason = "; ".join(f"{node} {why}" for node, why in deletes.items())
        return PoolDecision(
            pool.name,
            replace(record, updated_at=now),
            delete=tuple(deletes),
            reason=reason,
            nodes_before=count,
        )
    if count < pool.min_nodes:
        return PoolDecision(
            pool.name,
            replace(record, pending_since=None, updated_at=now),
            create=pool.min_nodes - count,
            reason=f"{count} node(s), below minNodes {pool.min_nodes}",
            nodes_before=count,
        )
    needed, fit, unfit = _nodes_needed(inp, pool, nodes, pending.items)
    if needed:
        since = record.pending_since if record.pending_since is not None else now
        waited = now - since
        if waited < pool.scale_up_after:
            return PoolDecision(
                pool.name,
                replace(record, pending_since=since, updated_at=now),
                reason=f"{len(fit)} replica(s) wait for a node ({waited:.0f}s of "
                f"{pool.scale_up_after:.0f}s)",
                unfit=unfit,
                nodes_before=count,
            )
        make = min(needed, pool.max_nodes - count)
        shown = ", ".join(u.request.replica for u in fit[:3]) + (
            f" and {len(fit) - 3} more" if len(fit) > 3 else ""
        )
        why = _first_reason(fit)
        capped = f" (maxNodes {pool.max_nodes})" if make < needed else ""
        pending.items = [u for u in pending.items if u not in fit]
        return PoolDecision(
            pool.name,
            replace(record, pending_since=None, updated_at=now),
            create=make,
            reason=f"{shown} unschedulable for {waited:.0f}s ({why}); "
            f"{describe_template(pool)} fits them: {make} more{capped}",
            unfit=unfit,
            nodes_before=count,
        )
    record = replace(record, pending_since=None)
    full = count >= pool.max_nodes and bool(fit)
    # Replicas a node of this pool would take wait (the pool is full): keep every node.
    nodes, drain, reason = _scale_down(inp, pool, nodes, blocked=bool(fit))
    if full and not drain:
        reason = f"{len(fit)} replica(s) wait, and the pool is at maxNodes {pool.max_nodes}"
    return PoolDecision(
        pool.name,
        replace(record, nodes=tuple(nodes), updated_at=now),
        drain=drain,
        reason=reason,
        unfit=unfit,
        nodes_before=count,
    )


def _retire(inp: PoolInput, record: NodePoolRecord) -> PoolDecision:
    """A pool that left Git: its nodes are drained (all at once) and deleted when empty."""
    nodes = list(record.nodes)
    deletes = _gone_or_drained(inp.live, nodes)
    if deletes:
        return PoolDecision(
            record.pool,
            replace(record, updated_at=inp.now),
            delete=tuple(deletes),
            reason="the NodePool left Git: "
            + "; ".join(f"{node} {why}" for node, why in deletes.items()),
            nodes_before=len(nodes),
        )
    ready = [n for n in nodes if n.get("state") != DRAINING]
    if not ready:
        return PoolDecision(record.pool, record, nodes_before=len(nodes))
    first = ready[0]["name"]
    marked = tuple(
        {**n, "state": DRAINING, "draining_since": inp.now} if n["name"] == first else n
        for n in nodes
    )
    return PoolDecision(
        record.pool,
        replace(record, nodes=marked, updated_at=inp.now),
        drain=first,
        reason="the NodePool left Git: its nodes are drained and deleted",
        nodes_before=len(nodes),
    )


def _gone_or_drained(live: LiveState, nodes: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Nodes to delete: drained ones that run nothing any more."""
    out: dict[str, str] = {}
    for node in nodes:
        name = node["name"]
        if node.get("state") != DRAINING:
            continue
        left = [r for r in live.replicas() if r.node == name and r.state != "exited"]
        if name not in live.nodes:
            out[name] = "is drained and no longer observed"
        elif not left:
            out[name] = "is drained: nothing runs there"
    return out


def _first_reason(fit: Sequence[Unplaced]) -> str:
    for item in fit:
        if item.reasons:
            return item.reasons[0]
    return "no node fits"


def _nodes_needed(
    inp: PoolInput,
    pool: NodePool,
    nodes: Sequence[Mapping[str, Any]],
    pending: Sequence[Unplaced],
) -> tuple[int, list[Unplaced], tuple[str, ...]]:
    """How many template nodes the waiting replicas need (bin packed by the scheduler),
    which replicas they take, and which no template node would take (with why)."""
    if not pending:
        return 0, [], ()
    live = inp.live
    draining = {n["name"] for n in nodes if n.get("state") == DRAINING}
    views = [
        v
        for v in node_views(live, cordoned=draining | set(live.draining_nodes))
        if v.name in inp.pass_nodes or v.name not in {n["name"] for n in nodes}
    ]
    # Nodes made after the pass that found these replicas waiting: as good as there.
    upcoming = [
        template_view(pool, n["name"])
        for n in nodes
        if n["name"] not in inp.pass_nodes and n["name"] not in draining
    ]
    room = max(0, pool.max_nodes - len(nodes))
    # One template node per waiting replica at most: how many it takes, whatever the
    # room left (the caller caps it at maxNodes and says so).
    fresh = [template_view(pool, f"{pool.name}-template-{i}") for i in range(len(pending))]
    running = [r for r, _ in running_replicas(live)]
    requests = [u.request for u in pending]
    placed = schedule([*views, *upcoming, *fresh], running, requests)
    fresh_names = {v.name for v in fresh}
    used: set[str] = set()
    fit: list[Unplaced] = []
    unfit: list[str] = []
    for item, decision in zip(pending, placed, strict=True):
        if decision.node in fresh_names:
            fit.append(item)
            used.add(decision.node)
        elif decision.node is None:
            why = next(
                (r.split(": ", 1)[-1] for r in decision.reasons if r.startswith(pool.name)),
                "no node fits it",
            )
            unfit.append(
                f"{item.request.replica}: {describe_template(pool)} would not fit it ({why})"
            )
    if room == 0:
        return 0, fit, tuple(unfit)
    return len(used), fit, tuple(unfit)


def _scale_down(
    inp: PoolInput, pool: NodePool, nodes: list[Mapping[str, Any]], *, blocked: bool
) -> tuple[list[Mapping[str, Any]], str | None, str]:
    """The nodes with their under-use clocks updated, and the node to drain (if any)."""
    now = inp.now
    updated: list[Mapping[str, Any]] = []
    candidates: list[tuple[float, str]] = []
    for node in nodes:
        name = node["name"]
        if node.get("state") == DRAINING:
            updated.append(node)
            continue
        used = utilization(inp.live, name)
        low = used is not None and used < pool.utilization_below
        since = node.get("low_since") if low else None
        if low and since is None:
            since = now
        node = {**node, "low_since": since, "utilization": used}
        updated.append(node)
        if since is not None and now - since >= pool.scale_down_after:
            candidates.append((float(used or 0.0), name))
    draining = any(n.get("state") == DRAINING for n in updated)
    if not candidates:
        return updated, None, ""
    if draining:
        return updated, None, "a node is draining: one at a time"
    if len(nodes) <= pool.min_nodes:
        return updated, None, f"under-used nodes kept: minNodes {pool.min_nodes}"
    if blocked:
        return updated, None, "under-used nodes kept while replicas wait for one of its nodes"
    for used, name in sorted(candidates):
        if not _fits_elsewhere(inp, name):
            continue
        marked = [
            {**n, "state": DRAINING, "draining_since": now} if n["name"] == name else n
            for n in updated
        ]
        low_for = now - float(next(n for n in updated if n["name"] == name)["low_since"])
        return (
            marked,
            name,
            f"{name} requested {used:.0%} < {pool.utilization_below:.0%} for "
            f"{low_for:.0f}s, its replicas fit elsewhere",
        )
    return updated, None, "under-used nodes kept: their replicas fit nowhere else"


def _fits_elsewhere(inp: PoolInput, node: str) -> bool:
    """Whether every replica running on ``node`` would be placed on another node."""
    live, desired = inp.live, inp.desired
    counted = running_replicas(live)
    leaving = [r for r, _ in counted if r.node == node]
    if not leaving:
        return True
    staying: list[Running] = [r for r, _ in counted if r.node != node]
    views = [
        v for v in node_views(live, cordoned=set(live.draining_nodes) | {node}) if v.name != node
    ]
    requests: list[Request] = []
    for running in leaving:
        service = desired.services.get(running.service)
        if service is None:
            continue  # being pruned: it goes anyway
        requests.append(
            Request(
                running.service,
                running.replica,
                running.cpu_millis,
                running.memory_bytes,
                service.placement,
                service.resources.qos_class,
                drivers=runnable_drivers(service),
            )
        )
    placed = schedule(views, staying, requests)
    return all(d.node is not None for d in placed)


def starting_replicas(desired: DesiredState, decision: PassDecision | None) -> list[Running]:
    """The replicas ``decision`` starts, as the scheduler counts them once they run (a
    plan made before they run must not give their room to the replicas left waiting)."""
    if decision is None:
        return []
    out: list[Running] = []
    for starts in decision.starts.values():
        for start in starts:
            service = desired.services.get(start.service)
            if service is None:
                continue
            requests = service.resources.requests
            out.append(
                Running(
                    start.service,
                    start.replica,
                    start.node,
                    requests.cpu_millis or 0,
                    requests.memory_bytes or 0,
                    service.placement.priority,
                    service.resources.qos_class,
                )
            )
    return out


def pools_that_fit(
    desired: DesiredState,
    live: LiveState,
    pending: Sequence[Unplaced],
    starting: Sequence[Running] = (),
) -> dict[str, str]:
    """Replica -> the first NodePool (by name) whose template node would take it, for
    replicas a pass could not place (``starting``: the replicas that pass starts, not yet
    running): what ``gitorch plan`` and ``gitorch apply`` say about them."""
    out: dict[str, str] = {}
    left = list(pending)
    starting_keys = {(r.service, r.replica) for r in starting}
    for name, pool in sorted(desired.node_pools.items()):
        if not left:
            break
        fresh = [template_view(pool, f"{name}-template-{i}") for i in range(len(left))]
        running = [
            r for r, _ in running_replicas(live) if (r.service, r.replica) not in starting_keys
        ]
        running += starting
        placed = schedule([*node_views(live), *fresh], running, [u.request for u in left])
        names = {v.name for v in fresh}
        taken = {u.request.replica for u, d in zip(left, placed, strict=True) if d.node in names}
        out.update({replica: name for replica in taken})
        left = [u for u in left if u.request.replica not in taken]
    return out
