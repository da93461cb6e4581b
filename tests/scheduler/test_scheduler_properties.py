"""Properties of any schedule, on random clusters: replayed placement by placement."""

from __future__ import annotations

import random
from collections import defaultdict

from hypothesis import event, given, settings
from hypothesis import strategies as st
from sched_oracle import Cluster, reject
from sched_strategies import MI, nodes, requests, running

from gitorch.manifests.model import Placement
from gitorch.scheduler import (
    LEAST_ALLOCATED,
    MOST_ALLOCATED,
    NodeView,
    Request,
    Running,
    schedule,
)
from gitorch.scheduler.preempt import importance

strategies = st.sampled_from([LEAST_ALLOCATED, MOST_ALLOCATED])


@settings(max_examples=200, deadline=None)
@given(st.data(), strategies)
def test_never_over_allocatable_and_anti_affinity_kept(data: st.DataObject, strategy: str) -> None:
    node_list = data.draw(nodes())
    live = data.draw(running(node_list))
    reqs = data.draw(requests())
    by_name = {n.name: n for n in node_list}
    cluster = Cluster(node_list, live)
    for req, decision in zip(reqs, schedule(node_list, live, reqs, strategy=strategy), strict=True):
        if decision.node is None:
            continue
        node = by_name[decision.node]
        assert cluster.cpu_used[node.name] + req.cpu_millis <= node.cpu_millis
        assert cluster.mem_used[node.name] + req.memory_bytes <= node.memory_bytes
        for term in req.placement.service_anti_affinity:
            if term.required:
                domain = node.topology(term.topology_key)
                assert not cluster.count_in_domain(term.service, term.topology_key, domain)
        cluster.add(req.service, node.name, req.cpu_millis, req.memory_bytes)


def _eligible(node: NodeView, req: Request) -> bool:
    selector = req.placement.node_selector
    return (
        node.ready
        and not node.unschedulable
        and all(node.labels.get(k) == v for k, v in selector.items())
    )


@settings(max_examples=200, deadline=None)
@given(st.data(), strategies)
def test_do_not_schedule_skew_never_above_max_skew(data: st.DataObject, strategy: str) -> None:
    """Skew = max - min of the service's replicas per domain, over the domains of the
    nodes eligible for it (ready, not cordoned, nodeSelector matching), from empty."""
    node_list = data.draw(nodes())
    reqs = data.draw(requests())
    placement_of: dict[str, set[int]] = defaultdict(set)
    for r in reqs:
        placement_of[r.service].add(id(r.placement))
    decisions = schedule(node_list, [], reqs, strategy=strategy)
    by_name = {n.name: n for n in node_list}
    for service, ids in placement_of.items():
        if len(ids) != 1:
            continue  # batches with different selectors count different domains
        mine = [(r, d) for r, d in zip(reqs, decisions, strict=True) if r.service == service]
        req = mine[0][0]
        for spread in req.placement.spread:
            if spread.when_unsatisfiable != "DoNotSchedule":
                continue
            key = spread.topology_key
            counts = {
                n.topology(key): 0
                for n in node_list
                if _eligible(n, req) and n.topology(key) is not None
            }
            for _, d in mine:
                if d.node is not None:
                    counts[by_name[d.node].topology(key)] += 1
            if counts:
                assert max(counts.values()) - min(counts.values()) <= spread.max_skew


@settings(max_examples=200, deadline=None)
@given(st.data(), strategies, st.randoms(use_true_random=False))
def test_deterministic_whatever_the_input_order(
    data: st.DataObject, strategy: str, rnd: random.Random
) -> None:
    node_list = data.draw(nodes())
    live = data.draw(running(node_list))
    reqs = data.draw(requests())
    first = schedule(node_list, live, reqs, strategy=strategy, preemption=True)
    shuffled_nodes, shuffled_live = list(node_list), list(live)
    rnd.shuffle(shuffled_nodes)
    rnd.shuffle(shuffled_live)
    again = schedule(shuffled_nodes, shuffled_live, reqs, strategy=strategy, preemption=True)
    assert again == first


@st.composite
def crowded(draw: st.DrawFn) -> tuple[list[NodeView], list[Running], list[Request]]:
    """Few full nodes, many small low-priority replicas, big high-priority requests."""
    node_list = [
        NodeView(f"n{i}", draw(st.integers(5, 20)) * 100, 16 * 64 * MI)
        for i in range(draw(st.integers(1, 3)))
    ]
    live = [
        Running(
            draw(st.sampled_from(["web", "api"])),
            f"r{i}",
            draw(st.sampled_from(node_list)).name,
            draw(st.integers(1, 6)) * 100,
            draw(st.integers(0, 4)) * 64 * MI,
            priority=draw(st.integers(0, 3)),
            qos=draw(st.sampled_from(["", "BestEffort", "Guaranteed"])),
        )
        for i in range(draw(st.integers(0, 14)))
    ]
    reqs = [
        Request(
            "db",
            f"db-{i}",
            draw(st.integers(3, 15)) * 100,
            draw(st.integers(0, 8)) * 64 * MI,
            Placement(priority=draw(st.integers(1, 4))),
        )
        for i in range(draw(st.integers(1, 4)))
    ]
    return node_list, live, reqs


@settings(max_examples=300, deadline=None)
@given(st.data(), strategies)
def test_preemption_picks_valid_minimal_victims(data: st.DataObject, strategy: str) -> None:
    if data.draw(st.booleans()):
        node_list, live, reqs = data.draw(crowded())
    else:
        node_list = data.draw(nodes())
        live = data.draw(running(node_list, max_size=12))
        reqs = data.draw(requests())
    by_name = {n.name: n for n in node_list}
    running_by_id = {(r.service, r.replica, r.node): r for r in live}
    cluster = Cluster(node_list, live)
    evicted: set[tuple[str, str, str]] = set()
    decisions = schedule(node_list, live, reqs, strategy=strategy, preemption=True)
    for req, decision in zip(reqs, decisions, strict=True):
        if decision.node is None:
            assert not decision.victims
            continue
        node = by_name[decision.node]
        event(f"victims: {min(len(decision.victims), 3)}")
        if decision.victims:
            # Only when nothing fitted without evicting.
            assert all(reject(cluster, n, req) is not None for n in node_list)
            victims = [running_by_id[v] for v in decision.victims]
            assert len(set(decision.victims)) == len(victims)
            assert not evicted & set(decision.victims)  # evicted at most once
            for v in victims:
                assert v.node == node.name and v.priority < req.priority
            for spared in victims:  # minimal: none of them could have stayed
                for v in victims:
                    if v is not spared:
                        cluster.remove(v.service, v.node, v.cpu_millis, v.memory_bytes)
                assert reject(cluster, node, req) is not None
                for v in victims:
                    if v is not spared:
                        cluster.add(v.service, v.node, v.cpu_millis, v.memory_bytes)
            for v in victims:
                cluster.remove(v.service, v.node, v.cpu_millis, v.memory_bytes)
            evicted.update(decision.victims)
            assert max(importance(v) for v in victims) < (req.priority, 9)
        assert reject(cluster, node, req) is None  # the preemptor fits
        cluster.add(req.service, node.name, req.cpu_millis, req.memory_bytes)
