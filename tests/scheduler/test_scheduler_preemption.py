"""Preemption, NoExecute evictions and reason kinds: table-driven."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import pytest

from gitorch.manifests.model import Placement, ServiceAffinityTerm, Toleration
from gitorch.scheduler import Decision, NodeView, Request, Running, evictions, reason_kind, schedule

MI = 1024**2


def node(name: str, cpu: int = 1000, **kwargs: object) -> NodeView:
    return NodeView(name, cpu, 1024 * MI, MappingProxyType({}), **kwargs)  # type: ignore[arg-type]


def run(replica: str, node: str, cpu: int, priority: int = 0, qos: str = "") -> Running:
    return Running("low", replica, node, cpu, 0, priority, qos)


def big(priority: int = 5, cpu: int = 600, **placement: object) -> Request:
    return Request("db", "db-1", cpu, 0, Placement(priority=priority, **placement))  # type: ignore[arg-type]


@dataclass
class PreemptCase:
    nodes: list[NodeView]
    running: list[Running]
    request: Request
    node: str | None
    victims: list[str] = field(default_factory=list)


CASES = {
    "one-victim-suffices": PreemptCase(
        [node("a")], [run("r1", "a", 500), run("r2", "a", 400)], big(), "a", ["r1"]
    ),
    "fewest-victims-across-nodes": PreemptCase(
        [node("a"), node("b")],
        [run("a1", "a", 300), run("a2", "a", 300), run("a3", "a", 300), run("b1", "b", 900)],
        big(),
        "b",
        ["b1"],
    ),
    "lowest-priority-first": PreemptCase(
        [node("a")],
        [run("hi", "a", 500, priority=3), run("lo", "a", 500, priority=1)],
        big(cpu=500),
        "a",
        ["lo"],
    ),
    "lowest-max-priority-between-nodes": PreemptCase(
        [node("a"), node("b")],
        [run("a1", "a", 900, priority=2), run("b1", "b", 900, priority=1)],
        big(),
        "b",
        ["b1"],
    ),
    "best-effort-before-guaranteed-at-equal-priority": PreemptCase(
        [node("a")],
        [run("g", "a", 500, qos="Guaranteed"), run("be", "a", 500, qos="BestEffort")],
        big(cpu=500),
        "a",
        ["be"],
    ),
    "burstable-before-guaranteed-across-nodes": PreemptCase(
        [node("a"), node("b")],
        [run("g", "a", 900, qos="Guaranteed"), run("bu", "b", 900, qos="Burstable")],
        big(),
        "b",
        ["bu"],
    ),
    "node-name-breaks-ties": PreemptCase(
        [node("b"), node("a")], [run("b1", "b", 900), run("a1", "a", 900)], big(), "a", ["a1"]
    ),
    "two-victims-when-one-is-not-enough": PreemptCase(
        [node("a")],
        [run("r1", "a", 300), run("r2", "a", 300), run("r3", "a", 400)],
        big(cpu=700),
        "a",
        ["r1", "r3"],  # listed least important first
    ),
    "equal-priority-is-never-a-victim": PreemptCase(
        [node("a")], [run("r1", "a", 900, priority=5)], big(priority=5), None
    ),
    "eviction-cannot-cure-a-taint": PreemptCase(
        [node("a", taints=(("dedicated", "x", "NoSchedule"),))], [run("r1", "a", 900)], big(), None
    ),
    "eviction-lifts-anti-affinity": PreemptCase(
        [node("a", cpu=4000)],
        [run("r1", "a", 100)],
        big(service_anti_affinity=(ServiceAffinityTerm("low", "node", True),)),
        "a",
        ["r1"],
    ),
    "too-big-even-on-an-empty-node": PreemptCase(
        [node("a")], [run("r1", "a", 900)], big(cpu=1200), None
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_preemption(name: str) -> None:
    case = CASES[name]
    (decision,) = schedule(case.nodes, case.running, [case.request], preemption=True)
    assert decision.node == case.node, decision
    assert [v[1] for v in decision.victims] == case.victims
    assert all(v[2] == case.node and v[0] == "low" for v in decision.victims)
    if case.node is None:
        assert decision.reasons


def test_preemption_is_off_by_default() -> None:
    (decision,) = schedule([node("a")], [run("r1", "a", 900)], [big()])
    assert decision.node is None
    assert decision.reasons == ("a: insufficient cpu (needs 600m, free 100m)",)


def test_a_replica_placed_in_the_same_call_is_not_a_victim() -> None:
    low = Request("low", "low-1", 900, 0, Placement(priority=0))
    decisions = schedule([node("a")], [], [low, big()], preemption=True)
    assert [d.node for d in decisions] == ["a", None]


def test_evicted_room_is_reused_by_later_requests() -> None:
    decisions = schedule(
        [node("a"), node("b")],
        [run("a1", "a", 1000), run("b1", "b", 1000)],
        [big(cpu=500), Request("db", "db-2", 500, 0, Placement(priority=5)), big(cpu=500)],
        preemption=True,
    )
    assert [(d.node, len(d.victims)) for d in decisions] == [("a", 1), ("a", 0), ("b", 1)]


def test_noexecute_evictions() -> None:
    nodes = [
        node("a", taints=(("gpu", "", "NoExecute"), ("x", "y", "NoSchedule"))),
        node("b", taints=(("dedicated", "db", "NoExecute"),)),
        node("c"),
    ]
    running = [
        Running("web", "web-1", "a"),
        Running("gpu-job", "gpu-job-1", "a"),
        Running("db", "db-1", "b"),
        Running("web", "web-2", "b"),
        Running("web", "web-3", "c"),
        Running("orphan", "orphan-1", "b"),
    ]
    placements = {
        "web": Placement(),
        "gpu-job": Placement(tolerations=(Toleration("gpu", "Exists", None, "NoExecute"),)),
        "db": Placement(tolerations=(Toleration("dedicated", "Equal", "db", None),)),
    }
    assert evictions(nodes, running, placements) == [
        ("web", "web-1", "a", "taint gpu:NoExecute"),
        ("orphan", "orphan-1", "b", "taint dedicated=db:NoExecute"),
        ("web", "web-2", "b", "taint dedicated=db:NoExecute"),
    ]


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("a: insufficient memory (needs 1Gi, free 0)", "insufficient memory"),
        ("a: insufficient cpu (needs 1, free 500m)", "insufficient cpu"),
        ("b: cordoned (unschedulable)", "cordoned"),
        ("c: NotReady", "NotReady"),
        ("d: taint dedicated=db:NoSchedule", "taint dedicated=db:NoSchedule"),
        ("e: nodeSelector zone=a not matched", "nodeSelector zone=a not matched"),
        ("f: anti-affinity with web (zone)", "anti-affinity with web"),
        ("g: affinity: no cache in the same zone", "affinity: no cache in the same zone"),
        ("h: spread over zone would exceed maxSkew 1", "spread over zone would exceed maxSkew 1"),
        ("no nodes", "no nodes"),
    ],
)
def test_reason_kinds_are_stable(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def test_no_nodes_counts() -> None:
    assert Decision("web", "web-1", None, ("no nodes",)).reason_counts == {"no nodes": 1}


def test_counts_across_every_node_of_a_real_decision() -> None:
    nodes = [
        node("a", ready=False),
        node("b", unschedulable=True),
        node("c", taints=(("dedicated", "db", "NoSchedule"),)),
        node("d", cpu=100),
        node("e", cpu=100),
    ]
    (decision,) = schedule(nodes, [], [big()])
    assert decision.reason_counts == {
        "NotReady": 1,
        "cordoned": 1,
        "taint dedicated=db:NoSchedule": 1,
        "insufficient cpu": 2,
    }
