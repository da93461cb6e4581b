"""Issue 7, "What must hold": a high-priority service that fits nowhere preempts a
low-priority one, as the plan said it would.

Node pb is nearly full of ``batch`` (priority 0); ``critical`` (priority 100) needs more
cpu than any node has free, and pa is too small for it anyway. The plan names the victim
under ``placements[].preempts``; after the commit the critical replica runs on pb, the
victim is gone, and batch's status says why its slot stays empty (it cannot preempt a
higher priority back).

The brief asked for a *BestEffort* victim; a BestEffort replica requests nothing, so it
never fills a node and evicting it frees nothing (the scheduler rightly never picks
one). ``batch`` therefore requests cpu without limits: Burstable, the lowest class that
can hold room. The golden case tests/plans/preemption shows a BestEffort service on the
same node being spared.
"""

from __future__ import annotations

from multinode_helpers import World, node_yaml, placements_of, service_yaml, settled, where
from reconciler_helpers import commit, free_port, gitorch, wait_for


def test_high_priority_preempts_where_the_plan_says(world: World) -> None:
    world.process_nodes = ["pa", "pb"]
    nodes = node_yaml("pa", cpu="500m") + "---\n" + node_yaml("pb", cpu="2")
    batch = service_yaml("batch", port=free_port(), replicas=2, cpu="800m", memory="16Mi")
    commit(world.repo, {"nodes.yaml": nodes, "batch.yaml": batch}, "batch fills pb")
    daemon = world.daemon()
    wait_for(
        "batch converged",
        lambda: settled(daemon.service("batch"), 2),
        40,
        interval=0.2,
        describe=daemon.log_tail,
    )
    assert where(daemon.service("batch")) == {"batch-1": "pb", "batch-2": "pb"}
    batch_ids = {i["replica"]: i["id"] for i in daemon.service("batch")["instances"]}

    critical = service_yaml(
        "critical", port=free_port(), replicas=1, cpu="1", memory="16Mi", priority=100
    )
    (world.repo / "critical.yaml").write_text(critical, encoding="utf-8")
    code, plan = plan_json_worktree(world)
    assert code == 2
    assert plan["placements"] == [
        {
            "service": "critical",
            "replica": "critical-1",
            "node": "pb",
            "preempts": ["batch/batch-1 on pb"],
        }
    ], plan["placements"]
    assert plan["unschedulable"] == []

    commit(world.repo, {"critical.yaml": critical}, "critical, priority 100")

    def preempted() -> bool:
        crit, bat = daemon.service("critical"), daemon.service("batch")
        return (
            settled(crit, 1)
            and bat is not None
            and batch_ids["batch-1"] not in {i["id"] for i in bat["instances"]}
            and bat["rollout"]["lastError"] is not None
        )

    wait_for("batch-1 preempted", preempted, 40, interval=0.2, describe=daemon.log_tail)
    assert placements_of(plan) == where(daemon.service("critical"))
    bat = daemon.service("batch")
    # The other batch replica was not touched, and nothing took batch-1's slot.
    assert where(bat) == {"batch-2": "pb"}
    assert [i["id"] for i in bat["instances"]] == [batch_ids["batch-2"]]
    why = bat["rollout"]["lastError"]
    assert "batch-1 cannot be placed" in why, why
    assert "pa: insufficient cpu" in why and "pb: insufficient cpu" in why, why


def plan_json_worktree(world: World) -> tuple[int, dict[str, object]]:
    """The plan of the uncommitted working tree (what a reviewer sees before merging)."""
    done = gitorch(
        "plan",
        "--repo",
        str(world.repo),
        "--worktree",
        "--state",
        str(world.state),
        "--format",
        "json",
        cwd=world.root,
    )
    assert done.code in (0, 2), (done.code, done.stderr)
    return done.code, done.json()
