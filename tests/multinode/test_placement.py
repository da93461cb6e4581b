"""Issue 7, "What must hold": what ``gitorch plan`` says about placement is what happens.

Three nodes (two process nodes and a docker node on a private engine), services with cpu
and memory requests, required anti-affinity by node, a NoSchedule taint that only one
service tolerates: the plan's placements, replica by replica, are where the replicas run
once the daemon has converged, and no node holds more than its capacity.
"""

from __future__ import annotations

import pytest
from multinode_helpers import (
    World,
    node_yaml,
    nodes_json,
    placements_of,
    plan_json,
    service_yaml,
    settled,
    where,
)
from private_dockerd import PrivateEngine
from reconciler_helpers import commit, free_port, wait_for

from gitorch.manifests.quantities import parse_cpu

pytestmark = pytest.mark.docker

TAINT = ("dedicated", "ops", "NoSchedule")


def test_plan_placements_are_where_replicas_run(world: World, engine: PrivateEngine) -> None:
    world.process_nodes = ["pa", "pb"]
    world.docker_nodes = {"dk": engine.endpoint}
    # Capacities and requests chosen so each service's placement depends on the ones
    # placed before it (api, report, web: the plan's and the reconciler's order): web's
    # two replicas fit only where report is not, unless report is counted wrongly.
    files = {
        "nodes.yaml": "---\n".join(
            [
                node_yaml("dk", driver="docker", endpoint=engine.endpoint, cpu="2"),
                node_yaml("pa", cpu="2"),
                node_yaml("pb", cpu="2", taints=[TAINT]),
            ]
        ),
        "api.yaml": service_yaml(
            "api",
            port=free_port(),
            replicas=3,
            cpu="500m",
            memory="32Mi",
            anti_affinity_self=True,
            tolerations=[TAINT],
        ),
        "report.yaml": service_yaml(
            "report", port=free_port(), replicas=1, cpu="800m", memory="32Mi"
        ),
        "web.yaml": service_yaml(
            "web", port=free_port(), replicas=2, cpu="500m", memory="32Mi", anti_affinity_self=True
        ),
    }
    commit(world.repo, files, "three nodes, three services")
    code, plan = plan_json(world.repo, world.state, world.root)
    assert code == 2
    assert plan["unschedulable"] == [], plan["unschedulable"]
    planned = placements_of(plan)
    assert len(planned) == 6, planned
    # What the constraints force, whatever the scores: api one per node (it tolerates the
    # taint), web never on the tainted pb and never twice on a node.
    assert sorted(n for r, n in planned.items() if r.startswith("api-")) == ["dk", "pa", "pb"]
    web_nodes = [n for r, n in planned.items() if r.startswith("web-")]
    assert "pb" not in web_nodes and len(set(web_nodes)) == 2, planned
    assert planned["report-1"] != "pb"

    daemon = world.daemon()
    want = {"api": 3, "report": 1, "web": 2}

    def all_settled() -> bool:
        status = daemon.status()
        by_name = {s["name"]: s for s in status["services"]}
        return all(settled(by_name.get(name), n) for name, n in want.items())

    wait_for("every service converged", all_settled, 60, interval=0.2, describe=daemon.log_tail)
    actual: dict[str, str] = {}
    for name in want:
        actual.update(where(daemon.service(name)))
    assert actual == planned

    # The docker node's replicas really are containers of the private engine.
    cluster = daemon.status()["cluster"]
    on_engine = {
        c["Labels"].split("dev.gitorch.replica=")[1].split(",")[0]
        for c in engine.containers(cluster)
    }
    assert on_engine == {r for r, n in actual.items() if n == "dk"}

    # Nothing over capacity, as `gitorch nodes` reports it.
    nodes = nodes_json(world.state, world.root)
    for row in nodes.values():
        assert row["condition"] == "Ready", row
        assert parse_cpu(row["allocated"]["cpu"]) <= parse_cpu(row["capacity"]["cpu"]), row
    assert nodes["pb"]["taints"] == [{"key": "dedicated", "value": "ops", "effect": "NoSchedule"}]
    # Planned again now that it all runs: nothing left to place.
    code, again = plan_json(world.repo, world.state, world.root)
    assert again["placements"] == [] and again["unschedulable"] == [], again
