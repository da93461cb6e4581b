"""The scheduler: each filter and score, table-driven; tie-breaking; determinism."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitorch.manifests.model import (
    Placement,
    ServiceAffinityTerm,
    SpreadConstraint,
    Toleration,
    WeightedMatch,
)
from gitorch.scheduler import (
    LEAST_ALLOCATED,
    MOST_ALLOCATED,
    Decision,
    NodeView,
    Request,
    Running,
    schedule,
)

GI = 1024**3
MI = 1024**2


def node(
    name: str,
    cpu: int = 2000,
    mem: int = 4 * GI,
    labels: dict[str, str] | None = None,
    **kwargs: Any,
) -> NodeView:
    return NodeView(name, cpu, mem, MappingProxyType(dict(labels or {})), **kwargs)


@dataclass
class FilterCase:
    nodes: list[NodeView]
    request: Request
    running: list[Running] = field(default_factory=list)
    reason: str | None = None  # expected reason for node "n" (None: placed on it)


def req(cpu: int = 100, mem: int = 64 * MI, service: str = "web", **placement: object) -> Request:
    return Request(service, f"{service}-9", cpu, mem, Placement(**placement))  # type: ignore[arg-type]


FILTERS = {
    "fits": FilterCase([node("n")], req()),
    "not-ready": FilterCase([node("n", ready=False)], req(), reason="NotReady"),
    "cordoned": FilterCase(
        [node("n", unschedulable=True)], req(), reason="cordoned (unschedulable)"
    ),
    "node-selector-miss": FilterCase(
        [node("n", labels={"zone": "a"})],
        req(node_selector={"zone": "b"}),
        reason="nodeSelector zone=b not matched",
    ),
    "node-selector-hit": FilterCase(
        [node("n", labels={"zone": "a"})], req(node_selector={"zone": "a"})
    ),
    "taint-no-schedule": FilterCase(
        [node("n", taints=(("dedicated", "db", "NoSchedule"),))],
        req(),
        reason="taint dedicated=db:NoSchedule",
    ),
    "taint-no-execute-without-value": FilterCase(
        [node("n", taints=(("gpu", "", "NoExecute"),))], req(), reason="taint gpu:NoExecute"
    ),
    "taint-prefer-is-not-a-filter": FilterCase(
        [node("n", taints=(("dedicated", "db", "PreferNoSchedule"),))], req()
    ),
    "toleration-equal": FilterCase(
        [node("n", taints=(("dedicated", "db", "NoSchedule"),))],
        req(tolerations=(Toleration("dedicated", "Equal", "db", "NoSchedule"),)),
    ),
    "toleration-wrong-value": FilterCase(
        [node("n", taints=(("dedicated", "db", "NoSchedule"),))],
        req(tolerations=(Toleration("dedicated", "Equal", "web", "NoSchedule"),)),
        reason="taint dedicated=db:NoSchedule",
    ),
    "toleration-wrong-effect": FilterCase(
        [node("n", taints=(("dedicated", "db", "NoSchedule"),))],
        req(tolerations=(Toleration("dedicated", "Equal", "db", "NoExecute"),)),
        reason="taint dedicated=db:NoSchedule",
    ),
    "toleration-exists-any-key": FilterCase(
        [node("n", taints=(("dedicated", "db", "NoSchedule"),))],
        req(tolerations=(Toleration(None, "Exists"),)),
    ),
    "insufficient-cpu": FilterCase(
        [node("n", cpu=1000)],
        req(cpu=500),
        [Running("other", "other-1", "n", 600, 0)],
        "insufficient cpu (needs 500m, free 400m)",
    ),
    "insufficient-memory": FilterCase(
        [node("n", mem=640 * MI)],
        req(mem=512 * MI),
        [Running("other", "other-1", "n", 0, 512 * MI)],
        "insufficient memory (needs 512Mi, free 128Mi)",
    ),
    "exactly-full-fits": FilterCase([node("n", cpu=1000, mem=GI)], req(cpu=1000, mem=GI)),
    "max-per-node": FilterCase(
        [node("n")], req(max_per_node=1), [Running("web", "web-1", "n")], "maxPerNode 1 reached"
    ),
    "required-anti-affinity": FilterCase(
        [node("n")],
        req(service_anti_affinity=(ServiceAffinityTerm("web", "node", True),)),
        [Running("web", "web-1", "n")],
        "anti-affinity with web (node)",
    ),
    # "o" holds what "n" lacks but is cordoned, so the decision lists n's reason.
    "required-affinity-elsewhere": FilterCase(
        [node("n", labels={"zone": "a"}), node("o", labels={"zone": "b"}, unschedulable=True)],
        req(service_affinity=(ServiceAffinityTerm("cache", "zone", True),)),
        [Running("cache", "cache-1", "o")],
        "affinity: no cache in the same zone",
    ),
    "required-affinity-nothing-yet": FilterCase(
        [node("n")], req(service_affinity=(ServiceAffinityTerm("cache", "node", True),))
    ),
    "spread-needs-the-label": FilterCase(
        [node("n")], req(spread=(SpreadConstraint("zone", 1),)), reason="no zone label for spread"
    ),
    # "o" is full, yet its zone counts for the skew (only cordon, NotReady and the
    # nodeSelector take a zone out of the count, as kube-scheduler does).
    "spread-max-skew": FilterCase(
        [node("n", labels={"zone": "a"}), node("o", cpu=0, labels={"zone": "b"})],
        req(spread=(SpreadConstraint("zone", 1),)),
        [Running("web", "web-1", "n")],
        "spread over zone would exceed maxSkew 1",
    ),
    "spread-ignores-ineligible-zones": FilterCase(
        [node("n", labels={"zone": "a"}), node("o", labels={"zone": "b"}, unschedulable=True)],
        req(spread=(SpreadConstraint("zone", 1),)),
        [Running("web", "web-1", "n")],
    ),
}


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_filter(name: str) -> None:
    case = FILTERS[name]
    (decision,) = schedule(case.nodes, case.running, [case.request])
    if case.reason is None:
        assert decision.node == "n", decision
    else:
        assert decision.node != "n"
        assert f"n: {case.reason}" in decision.reasons


@dataclass
class ScoreCase:
    nodes: list[NodeView]
    request: Request
    running: list[Running] = field(default_factory=list)
    winner: str = "a"
    strategy: str = LEAST_ALLOCATED


BUSY_B = [Running("other", "other-1", "b", 1000, GI)]
SCORES = {
    "least-allocated-prefers-the-emptier": ScoreCase([node("a"), node("b")], req(), BUSY_B, "a"),
    "most-allocated-packs": ScoreCase([node("a"), node("b")], req(), BUSY_B, "b", MOST_ALLOCATED),
    "node-affinity-beats-name-order": ScoreCase(
        [node("a"), node("b", labels={"disk": "ssd"})],
        req(node_affinity=(WeightedMatch(50, MappingProxyType({"disk": "ssd"})),)),
        winner="b",
    ),
    "preferred-service-affinity": ScoreCase(
        [node("a"), node("b")],
        req(service_affinity=(ServiceAffinityTerm("cache", "node", False, 50),)),
        [Running("cache", "cache-1", "b")],
        "b",
    ),
    "preferred-anti-affinity": ScoreCase(
        [node("a"), node("b")],
        req(service_anti_affinity=(ServiceAffinityTerm("db", "node", False, 50),)),
        [Running("db", "db-1", "a")],
        "b",
    ),
    "prefer-no-schedule-taint-is-a-penalty": ScoreCase(
        [node("a", taints=(("spot", "", "PreferNoSchedule"),)), node("b")], req(), winner="b"
    ),
    "schedule-anyway-spread": ScoreCase(
        [node("a", labels={"zone": "x"}), node("b", labels={"zone": "y"})],
        req(spread=(SpreadConstraint("zone", 1, "ScheduleAnyway"),)),
        [Running("web", "web-1", "a")],
        "b",
    ),
    "replicas-of-a-service-spread-by-default": ScoreCase(
        [node("a"), node("b")], req(cpu=0, mem=0), [Running("web", "web-1", "a")], "b"
    ),
    "tie-goes-to-the-first-name": ScoreCase([node("b"), node("a"), node("c")], req(), winner="a"),
}


@pytest.mark.parametrize("name", sorted(SCORES))
def test_score(name: str) -> None:
    case = SCORES[name]
    (decision,) = schedule(case.nodes, case.running, [case.request], strategy=case.strategy)
    assert decision.node == case.winner


def test_each_placement_counts_against_the_next() -> None:
    nodes = [node("a", cpu=1000), node("b", cpu=1000)]
    requests = [Request("web", f"web-{i}", 600, 0) for i in (1, 2, 3)]
    decisions = schedule(nodes, [], requests)
    assert [d.node for d in decisions] == ["a", "b", None]
    assert decisions[2].reasons == (
        "a: insufficient cpu (needs 600m, free 400m)",
        "b: insufficient cpu (needs 600m, free 400m)",
    )
    assert decisions[2].reason_counts == {"insufficient cpu": 2}


def test_no_nodes_is_a_reason() -> None:
    (decision,) = schedule([], [], [req()])
    assert decision == Decision("web", "web-9", None, ("no nodes",))


def test_reason_counts_group_by_kind() -> None:
    decision = Decision(
        "web",
        "web-1",
        None,
        (
            "a: insufficient memory (needs 1Gi, free 0)",
            "b: insufficient memory (needs 1Gi, free 10Mi)",
            "c: NotReady",
            "d: taint x=y:NoSchedule",
        ),
    )
    assert decision.reason_counts == {
        "insufficient memory": 2,
        "NotReady": 1,
        "taint x=y:NoSchedule": 1,
    }


def test_running_on_an_unknown_node_holds_nothing() -> None:
    (decision,) = schedule(
        [node("a", cpu=500)], [Running("x", "x-1", "gone", 500, 0)], [req(cpu=500)]
    )
    assert decision.node == "a"


names = st.sampled_from(["a", "b", "c", "d", "e"])
node_st = st.builds(
    lambda name, cpu, mem, zone, cordon: node(
        name, cpu * 100, mem * 64 * MI, labels={"zone": zone}, unschedulable=cordon
    ),
    names,
    st.integers(0, 40),
    st.integers(0, 64),
    st.sampled_from(["x", "y"]),
    st.booleans(),
)
request_st = st.builds(
    lambda svc, i, cpu, mem, spread: Request(
        svc,
        f"{svc}-{i}",
        cpu * 100,
        mem * 64 * MI,
        Placement(spread=(SpreadConstraint("zone", 1),) if spread else ()),
    ),
    st.sampled_from(["web", "api"]),
    st.integers(1, 9),
    st.integers(0, 10),
    st.integers(0, 16),
    st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(node_st, max_size=5, unique_by=lambda n: n.name),
    st.lists(request_st, max_size=12),
    st.sampled_from([LEAST_ALLOCATED, MOST_ALLOCATED]),
    st.randoms(use_true_random=False),
)
def test_deterministic_whatever_the_node_order(
    nodes: list[NodeView], requests: list[Request], strategy: str, rnd: random.Random
) -> None:
    first = schedule(nodes, [], requests, strategy=strategy)
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    assert schedule(shuffled, [], requests, strategy=strategy) == first
    # And never over capacity: what is placed fits on its node.
    for n in nodes:
        placed = [r for r, d in zip(requests, first, strict=True) if d.node == n.name]
        assert sum(r.cpu_millis for r in placed) <= n.cpu_millis
        assert sum(r.memory_bytes for r in placed) <= n.memory_bytes
        assert not (placed and n.unschedulable)
