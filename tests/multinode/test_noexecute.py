"""Issue 7, "What must hold": a NoExecute taint added to a Node in Git evicts the replicas
that do not tolerate it (they move to other nodes through their strategy, the endpoint
serving throughout), and leaves the tolerating ones where they are."""

from __future__ import annotations

from multinode_helpers import World, node_yaml, service_yaml, settled, where
from reconciler_helpers import LoadClient, commit, free_port, wait_for

TAINT = ("dedicated", "ops", "NoExecute")


def _nodes(taint_pa: bool) -> str:
    return "---\n".join(
        [
            node_yaml("pa", taints=[TAINT] if taint_pa else []),
            node_yaml("pb"),
            node_yaml("pc"),
        ]
    )


def test_noexecute_taint_evicts_only_the_untolerating(world: World, port: int) -> None:
    world.process_nodes = ["pa", "pb", "pc"]
    web = service_yaml("web", port=port, replicas=3, cpu="200m", memory="16Mi")
    ops = service_yaml(
        "ops", port=free_port(), replicas=3, cpu="200m", memory="16Mi", tolerations=[TAINT]
    )
    commit(world.repo, {"nodes.yaml": _nodes(False), "web.yaml": web, "ops.yaml": ops}, "two")
    daemon = world.daemon()

    def both_settled() -> bool:
        return settled(daemon.service("web"), 3) and settled(daemon.service("ops"), 3)

    wait_for("converged", both_settled, 40, interval=0.2, describe=daemon.log_tail)
    # The default spread: one replica of each service per node.
    assert sorted(where(daemon.service("web")).values()) == ["pa", "pb", "pc"]
    assert sorted(where(daemon.service("ops")).values()) == ["pa", "pb", "pc"]
    ops_before = {i["id"]: i["node"] for i in daemon.service("ops")["instances"]}
    web_before = {i["id"]: i["node"] for i in daemon.service("web")["instances"]}

    with LoadClient(port) as load:
        wait_for("load flowing", lambda: load.total > 50, 10)
        commit(world.repo, {"nodes.yaml": _nodes(True)}, "pa: dedicated=ops:NoExecute")

        def evicted() -> bool:
            svc = daemon.service("web")
            return settled(svc, 3) and "pa" not in where(svc).values()

        wait_for("web off pa", evicted, 30, interval=0.1, describe=daemon.log_tail)
        mark = load.total
        wait_for("load after the eviction", lambda: load.total > mark + 50, 10)
    print(f"NoExecute: {load.total} requests, {len(load.failures)} failed")
    assert load.failures == [], (len(load.failures), load.failures[:10], load.total)

    web_after = {i["id"]: i["node"] for i in daemon.service("web")["instances"]}
    # Only the replica on pa moved; the others kept running untouched.
    assert {i: n for i, n in web_before.items() if n != "pa"}.items() <= web_after.items()
    assert sorted(web_after.values()).count("pa") == 0
    # ops tolerates the taint: the very same replicas, still one on pa.
    assert settled(daemon.service("ops"), 3)
    assert {i["id"]: i["node"] for i in daemon.service("ops")["instances"]} == ops_before
