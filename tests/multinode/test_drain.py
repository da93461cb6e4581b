"""Issue 7, "What must hold": ``gitorch drain NODE`` moves every replica off the node
through the service's strategy, with no failed request and never fewer ready replicas
than desired (maxUnavailable 0); ``gitorch nodes`` shows it Draining; ``--undo`` makes it
schedulable again."""

from __future__ import annotations

import threading
import time

from multinode_helpers import (
    World,
    node_yaml,
    nodes_json,
    placements_of,
    service_yaml,
    settled,
    where,
)
from reconciler_helpers import LoadClient, commit, gitorch, wait_for

REPLICAS = 3


def test_drain_moves_replicas_without_losing_capacity(world: World, port: int) -> None:
    world.process_nodes = ["pa", "pb", "pc"]
    nodes = "---\n".join(node_yaml(n) for n in world.process_nodes)
    web = service_yaml("web", port=port, replicas=REPLICAS, cpu="200m", memory="16Mi")
    commit(world.repo, {"nodes.yaml": nodes, "web.yaml": web}, "web on three nodes")
    daemon = world.daemon()
    wait_for(
        "web converged",
        lambda: settled(daemon.service("web"), REPLICAS),
        40,
        interval=0.2,
        describe=daemon.log_tail,
    )
    # The default spread puts one replica on each node.
    assert sorted(where(daemon.service("web")).values()) == ["pa", "pb", "pc"]

    fewest_ready = [REPLICAS]
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            svc = daemon.service("web")
            if svc is not None:
                ready = sum(1 for i in svc["instances"] if i["state"] == "running" and i["ready"])
                fewest_ready[0] = min(fewest_ready[0], ready)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    with LoadClient(port) as load:
        wait_for("load flowing", lambda: load.total > 50, 10)
        watcher.start()
        done = gitorch("drain", "pa", "--state", str(world.state), cwd=world.root)
        assert done.code == 0, done.stderr
        assert "draining" in done.stdout
        drained = time.monotonic()

        def moved() -> bool:
            svc = daemon.service("web")
            return settled(svc, REPLICAS) and "pa" not in where(svc).values()

        wait_for("web moved off pa", moved, 30, interval=0.1, describe=daemon.log_tail)
        took = time.monotonic() - drained
        mark = load.total
        wait_for("load after the drain", lambda: load.total > mark + 50, 10)
        watching.set()
        watcher.join(5)
    print(f"drain: moved in {took:.2f}s; {load.total} requests, {len(load.failures)} failed")
    assert load.failures == [], (len(load.failures), load.failures[:10], load.total)
    assert fewest_ready[0] >= REPLICAS, fewest_ready

    rows = nodes_json(world.state, world.root)
    assert rows["pa"]["draining"] and rows["pa"]["unschedulable"], rows["pa"]
    assert rows["pa"]["replicas"] == 0
    text = gitorch("nodes", "--state", str(world.state), cwd=world.root)
    line = next(x for x in text.stdout.splitlines() if x.startswith("pa "))
    assert "Draining" in line, text.stdout
    # A drained node gets nothing new: a scale-up goes elsewhere.
    scaled = service_yaml("web", port=port, replicas=REPLICAS + 1, cpu="200m", memory="16Mi")
    commit(world.repo, {"web.yaml": scaled}, "one more web replica")
    wait_for(
        "web scaled up",
        lambda: settled(daemon.service("web"), REPLICAS + 1),
        30,
        interval=0.2,
        describe=daemon.log_tail,
    )
    assert "pa" not in where(daemon.service("web")).values()

    done = gitorch("drain", "--undo", "pa", "--state", str(world.state), cwd=world.root)
    assert done.code == 0, done.stderr
    rows = nodes_json(world.state, world.root)
    assert not rows["pa"]["draining"] and not rows["pa"]["unschedulable"], rows["pa"]
    # Schedulable again: the empty node is now the best place for one more replica.
    more = service_yaml("web", port=port, replicas=REPLICAS + 2, cpu="200m", memory="16Mi")
    (world.repo / "web.yaml").write_text(more, encoding="utf-8")
    assert placements_of(_worktree_plan(world)) == {"web-5": "pa"}
    # Replicas already moved stay where they are.
    assert "pa" not in where(daemon.service("web")).values()


def test_plan_places_nothing_on_a_drained_node(world: World, port: int) -> None:
    world.process_nodes = ["pa", "pb"]
    nodes = "---\n".join(node_yaml(n) for n in world.process_nodes)
    web = service_yaml("web", port=port, replicas=1, cpu="200m", memory="16Mi")
    commit(world.repo, {"nodes.yaml": nodes, "web.yaml": web}, "web")
    done = gitorch("apply", "--repo", str(world.repo), "--state", str(world.state), cwd=world.root)
    assert done.code == 0, done.stderr
    assert gitorch("drain", "pb", "--state", str(world.state), cwd=world.root).code == 0
    (world.repo / "web.yaml").write_text(
        service_yaml("web", port=port, replicas=2, cpu="200m", memory="16Mi"), encoding="utf-8"
    )
    # pa already holds web-1; only the drain keeps web-2 off the empty pb.
    assert placements_of(_worktree_plan(world))["web-2"] == "pa"


def _worktree_plan(world: World) -> dict[str, object]:
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
    assert done.code == 2, (done.code, done.stderr)
    plan = done.json()
    assert isinstance(plan, dict)
    return plan
