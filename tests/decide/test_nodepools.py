"""The NodePool decision (pure): scale up only when a template node would take replicas
left unschedulable for a while, scale down under-used nodes by draining first, bounds."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from decide_helpers import load_docs

from gitorch.decide.cluster import Unplaced
from gitorch.decide.nodepools import (
    DRAINING,
    PoolInput,
    decide_pools,
    pools_that_fit,
    utilization,
)
from gitorch.live.model import AppliedSpec, LiveNode, LiveReplica, LiveService, LiveState
from gitorch.manifests.model import DesiredState
from gitorch.scheduler import Request, Running
from gitorch.state.records import NodePoolRecord

GI = 1024**3


def pool_yaml(
    *, low: int = 0, high: int = 3, cpu: str = "2", up: str = "10s", down: str = "60s"
) -> str:
    return f"""
apiVersion: gitorch.dev/v1
kind: NodePool
metadata: {{name: workers}}
spec:
  minNodes: {low}
  maxNodes: {high}
  template:
    labels: {{pool: workers}}
    capacity: {{cpu: "{cpu}", memory: 4Gi}}
  provider: {{command: ["/bin/true"]}}
  scaleUp: {{after: {up}}}
  scaleDown: {{utilizationBelow: 0.5, after: {down}}}
"""


def web_yaml(cpu: str = "1500m", selector: str = "") -> str:
    placement = f"\n  placement: {{nodeSelector: {selector}}}" if selector else ""
    return f"""
apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: web}}
spec:
  image: web:1
  replicas: 2
  resources: {{requests: {{cpu: "{cpu}", memory: 64Mi}}}}{placement}
"""


def desired(*docs: str) -> DesiredState:
    return load_docs(*docs, revision="r1")


def node(name: str, cpu: int = 2000, labels: dict[str, str] | None = None) -> LiveNode:
    return LiveNode(
        name,
        "docker",
        True,
        "127.0.0.1",
        cpu,
        4 * GI,
        labels=MappingProxyType({**(labels or {}), "node": name}),
    )


def live(nodes: list[LiveNode], replicas: dict[str, str], state: DesiredState) -> LiveState:
    """``replicas``: replica name -> node, all of service web, running."""
    web = state.services["web"]
    applied = AppliedSpec("r1", web.template_digest, web.canonical, "Healthy")
    running = tuple(
        LiveReplica(f"id-{r}", r, "web", r, n, "r1", web.template_digest, "running")
        for r, n in replicas.items()
    )
    return LiveState(
        cluster="c",
        observed_at=0.0,
        nodes={n.name: n for n in nodes},
        services={"web": LiveService("web", applied, running)},
    )


def waiting(state: DesiredState, *replicas: str) -> tuple[Unplaced, ...]:
    web = state.services["web"]
    cpu = web.resources.requests.cpu_millis or 0
    mem = web.resources.requests.memory_bytes or 0
    return tuple(
        Unplaced(
            Request("web", r, cpu, mem, web.placement, drivers=frozenset({"docker"})),
            ("local: insufficient cpu (needs 1500m, free 500m)",),
        )
        for r in replicas
    )


def pool_node(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "endpoint": "unix:///x",
        "address": "127.0.0.1",
        "state": "ready",
        "labels": {"pool": "workers"},
        "cpu": 2000,
        "memory": 4 * GI,
        **extra,
    }


def test_unschedulable_replicas_make_a_node_once_they_waited_long_enough() -> None:
    state = desired(pool_yaml(), web_yaml())
    observed = live([node("local")], {"web-0": "local"}, state)
    pending = waiting(state, "web-1")
    first = decide_pools(PoolInput(state, {}, observed, pending, frozenset({"local"}), 100.0))
    assert first[0].create == 0 and first[0].record.pending_since == 100.0
    assert "wait for a node" in first[0].reason
    records = {"workers": first[0].record}
    later = decide_pools(PoolInput(state, records, observed, pending, frozenset({"local"}), 111.0))
    assert later[0].create == 1
    assert "web-1 unschedulable for 11s (local: insufficient cpu" in later[0].reason
    assert "a workers node (2 cpu, 4Gi) fits them" in later[0].reason


def test_replicas_bin_packed_onto_as_few_template_nodes_as_fit_within_max() -> None:
    state = desired(pool_yaml(high=2, up="0s"), web_yaml(cpu="900m"))
    observed = live([node("local", cpu=0)], {}, state)
    pending = waiting(state, *(f"web-{i}" for i in range(6)))  # 2 per node: 3 nodes
    decision = decide_pools(PoolInput(state, {}, observed, pending, frozenset({"local"}), 1.0))[0]
    assert decision.create == 2 and "(maxNodes 2)" in decision.reason


def test_a_replica_no_template_node_would_take_makes_no_node() -> None:
    state = desired(pool_yaml(up="0s"), web_yaml(selector="{disk: ssd}"))
    observed = live([node("local")], {}, state)
    decision = decide_pools(
        PoolInput(state, {}, observed, waiting(state, "web-0"), frozenset({"local"}), 1.0)
    )[0]
    assert decision.create == 0
    assert decision.unfit == (
        "web-0: a workers node (2 cpu, 4Gi) would not fit it (nodeSelector disk=ssd not matched)",
    )


def test_a_node_made_after_the_pass_counts_as_there() -> None:
    state = desired(pool_yaml(up="0s"), web_yaml())
    observed = live([node("local")], {"web-0": "local"}, state)
    records = {"workers": NodePoolRecord("workers", nodes=(pool_node("workers-aaaaaa"),))}
    decision = decide_pools(
        PoolInput(state, records, observed, waiting(state, "web-1"), frozenset({"local"}), 5.0)
    )[0]
    assert decision.create == 0


def test_below_min_nodes_are_made_at_once() -> None:
    state = desired(pool_yaml(low=2), web_yaml())
    decision = decide_pools(PoolInput(state, {}, live([node("local")], {}, state), (), frozenset(), 1.0))[0]  # fmt: skip
    assert decision.create == 2 and "below minNodes 2" in decision.reason


def test_an_under_used_node_is_drained_after_the_window_then_deleted_when_empty() -> None:
    state = desired(pool_yaml(down="60s"), web_yaml(cpu="500m"))
    nodes = [node("local"), node("workers-aaaaaa", labels={"pool": "workers"})]
    observed = live(nodes, {"web-0": "local", "web-1": "workers-aaaaaa"}, state)
    assert utilization(observed, "workers-aaaaaa") == 0.25
    record = NodePoolRecord("workers", nodes=(pool_node("workers-aaaaaa"),))
    inp = PoolInput(state, {"workers": record}, observed, (), frozenset({"local"}), 100.0)
    first = decide_pools(inp)[0]
    assert first.drain is None and first.record.nodes[0]["low_since"] == 100.0
    records = {"workers": first.record}
    again = decide_pools(PoolInput(state, records, observed, (), frozenset(), 161.0))[0]
    assert again.drain == "workers-aaaaaa"
    assert "workers-aaaaaa requested 25% < 50% for 61s, its replicas fit elsewhere" in again.reason
    assert again.record.nodes[0]["state"] == DRAINING
    # Still running there: nothing deleted yet.
    records = {"workers": again.record}
    held = decide_pools(PoolInput(state, records, observed, (), frozenset(), 170.0))[0]
    assert held.delete == () and held.drain is None
    moved = live(nodes, {"web-0": "local", "web-1": "local"}, state)
    done = decide_pools(PoolInput(state, records, moved, (), frozenset(), 175.0))[0]
    assert done.delete == ("workers-aaaaaa",)
    assert "drained: nothing runs there" in done.reason


def test_no_scale_down_below_min_or_while_replicas_wait_or_when_they_fit_nowhere() -> None:
    state = desired(pool_yaml(low=1, down="0s"), web_yaml(cpu="500m"))
    nodes = [node("local"), node("workers-aaaaaa", labels={"pool": "workers"})]
    observed = live(nodes, {"web-1": "workers-aaaaaa"}, state)
    record = NodePoolRecord("workers", nodes=(pool_node("workers-aaaaaa", low_since=0.0),))
    kept = decide_pools(PoolInput(state, {"workers": record}, observed, (), frozenset(), 9.0))[0]
    assert kept.drain is None and "minNodes 1" in kept.reason

    state = desired(pool_yaml(down="0s"), web_yaml(cpu="500m"))
    # web-0 fits no node there is (local is full) and a workers node would take it.
    full = live([node("local", cpu=0), nodes[1]], {"web-1": "workers-aaaaaa"}, state)
    blocked = decide_pools(
        PoolInput(state, {"workers": record}, full, waiting(state, "web-0"), frozenset(), 9.0)
    )[0]
    assert blocked.drain is None and "wait for a node" in blocked.reason
    # A replica waiting that an existing node will take blocks nothing.
    elsewhere = decide_pools(
        PoolInput(state, {"workers": record}, observed, waiting(state, "web-0"), frozenset(), 9.0)
    )[0]
    assert elsewhere.drain == "workers-aaaaaa"

    stuck = decide_pools(PoolInput(state, {"workers": record}, full, (), frozenset(), 9.0))[0]
    assert stuck.drain is None and "fit nowhere else" in stuck.reason


def test_a_pool_that_left_git_drains_and_deletes_its_nodes() -> None:
    state = desired(web_yaml())
    observed = live([node("local"), node("workers-aaaaaa")], {}, state)
    record = NodePoolRecord("workers", nodes=(pool_node("workers-aaaaaa"),))
    first = decide_pools(PoolInput(state, {"workers": record}, observed, (), frozenset(), 1.0))[0]
    assert first.drain == "workers-aaaaaa" and "left Git" in first.reason
    second = decide_pools(
        PoolInput(state, {"workers": first.record}, observed, (), frozenset(), 2.0)
    )[0]
    assert second.delete == ("workers-aaaaaa",)


def test_plan_names_the_pool_whose_node_would_take_a_waiting_replica() -> None:
    state = desired(pool_yaml(), web_yaml())
    observed = live([node("local")], {"web-0": "local"}, state)
    assert pools_that_fit(state, observed, waiting(state, "web-1")) == {"web-1": "workers"}
    picky = desired(pool_yaml(), web_yaml(selector="{disk: ssd}"))
    assert pools_that_fit(picky, observed, waiting(picky, "web-1")) == {}


def test_a_plan_before_anything_runs_counts_the_replicas_its_pass_starts() -> None:
    """Nothing runs yet: the pass starts web-0 on local and web-1 waits. Without the
    start counted, web-1 seemed to fit on the empty local node and the plan named no pool
    (found by running `gitorch plan` on a fresh state)."""
    state = desired(pool_yaml(), web_yaml())
    empty = live([node("local")], {}, state)
    web = state.services["web"]
    starts = [Running("web", "web-0", "local", web.resources.requests.cpu_millis or 0, 64 * 2**20)]
    assert pools_that_fit(state, empty, waiting(state, "web-1")) == {}
    assert pools_that_fit(state, empty, waiting(state, "web-1"), starts) == {"web-1": "workers"}
