"""Hypothesis strategies for random clusters and requests (shared by the property tests)."""

from __future__ import annotations

from types import MappingProxyType

from hypothesis import strategies as st

from gitorch.manifests.model import (
    Placement,
    ServiceAffinityTerm,
    SpreadConstraint,
    Toleration,
    WeightedMatch,
)
from gitorch.scheduler import NodeView, Request, Running

MI = 1024**2
SERVICES = ["web", "api", "db"]
ZONES = ["x", "y", "z"]
TAINTS = [
    ("dedicated", "db", "NoSchedule"),
    ("spot", "", "PreferNoSchedule"),
    ("gpu", "", "NoExecute"),
]


@st.composite
def nodes(draw: st.DrawFn, max_size: int = 7) -> list[NodeView]:
    count = draw(st.integers(0, max_size))
    out = []
    for i in range(count):
        labels = {}
        if draw(st.integers(0, 5)):  # now and then a node without a zone
            labels["zone"] = draw(st.sampled_from(ZONES))
        if draw(st.booleans()):
            labels["disk"] = "ssd"
        out.append(
            NodeView(
                f"n{i}",
                draw(st.integers(0, 20)) * 100,
                draw(st.integers(0, 16)) * 64 * MI,
                MappingProxyType(labels),
                ready=draw(st.integers(0, 7)) > 0,
                unschedulable=draw(st.integers(0, 7)) == 0,
                taints=tuple(draw(st.lists(st.sampled_from(TAINTS), max_size=2, unique=True))),
            )
        )
    return out


terms = st.builds(
    ServiceAffinityTerm,
    st.sampled_from(SERVICES),
    st.sampled_from(["node", "zone"]),
    st.booleans(),
    st.integers(1, 60),
)
placements = st.builds(
    Placement,
    node_selector=st.sampled_from(
        [MappingProxyType({}), MappingProxyType({"disk": "ssd"}), MappingProxyType({"zone": "x"})]
    ),
    node_affinity=st.lists(
        st.builds(WeightedMatch, st.integers(1, 100), st.just(MappingProxyType({"disk": "ssd"}))),
        max_size=1,
    ).map(tuple),
    service_anti_affinity=st.lists(terms, max_size=2).map(tuple),
    service_affinity=st.lists(terms, max_size=1).map(tuple),
    spread=st.lists(
        st.builds(
            SpreadConstraint,
            st.sampled_from(["zone", "node"]),
            st.integers(1, 2),
            st.sampled_from(["DoNotSchedule", "ScheduleAnyway"]),
        ),
        max_size=2,
    ).map(tuple),
    tolerations=st.lists(
        st.sampled_from(
            [Toleration("dedicated", "Equal", "db", "NoSchedule"), Toleration("gpu", "Exists")]
        ),
        max_size=1,
    ).map(tuple),
    max_per_node=st.integers(0, 2),
    priority=st.integers(0, 3),
)


@st.composite
def requests(draw: st.DrawFn, max_size: int = 14) -> list[Request]:
    """Requests in batches: replicas of one service share one Placement, as in a plan."""
    out: list[Request] = []
    for service in draw(st.lists(st.sampled_from(SERVICES), max_size=3)):
        placement = draw(placements)
        cpu = draw(st.integers(0, 6)) * 100
        mem = draw(st.integers(0, 6)) * 64 * MI
        for _ in range(draw(st.integers(1, max(1, max_size // 3)))):
            out.append(Request(service, f"{service}-{len(out)}", cpu, mem, placement))
    return out


@st.composite
def running(draw: st.DrawFn, node_list: list[NodeView], max_size: int = 8) -> list[Running]:
    names = [n.name for n in node_list] + ["gone"]
    out = []
    for i in range(draw(st.integers(0, max_size))):
        service = draw(st.sampled_from(SERVICES))
        out.append(
            Running(
                service,
                f"{service}-r{i}",
                draw(st.sampled_from(names)),
                draw(st.integers(0, 5)) * 100,
                draw(st.integers(0, 4)) * 64 * MI,
                priority=draw(st.integers(0, 3)),
                qos=draw(st.sampled_from(["", "BestEffort", "Burstable", "Guaranteed"])),
            )
        )
    return out
