"""Issue 16, "What must hold": a ReadWriteOnce volume on a cluster of two nodes.

The volume is bound where its first user lands, and every later replica (a kill, three
rollouts) lands on that node; a RollingUpdate never has two writers at once (the counter
app, which beats in its volume and keeps writing for a second after SIGTERM, reports any
overlap itself); when that node is cordoned the replica waits, and the plan says why; once
uncordoned it comes back there with its data. On two process nodes, and on two Docker
engines (the main one and a private one).
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

import pytest
from multinode_helpers import World, node_yaml, nodes_json, plan_json
from private_dockerd import PrivateEngine
from reconciler_helpers import DaemonProc, commit, free_port, pid_of, wait_for
from volume_helpers import COUNTER_IMAGE, counter_service, page, volume_yaml

MAIN_ENGINE = "unix:///var/run/docker.sock"
TIMEOUT = 90.0


def running_on(daemon: DaemonProc) -> dict[str, Any] | None:
    svc = daemon.service("counter")
    running = [i for i in (svc or {}).get("instances", []) if i["state"] == "running"]
    return running[0] if len(running) == 1 and running[0]["ready"] else None


def nodes_for(world: World, driver: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """Two node names -> their Node manifests, for ``driver``."""
    if driver == "process":
        world.process_nodes = ["pa", "pb"]
        return {n: node_yaml(n, cpu="2") for n in ("pa", "pb")}
    engine: PrivateEngine = request.getfixturevalue("engine")
    engine.load_image(COUNTER_IMAGE)
    world.docker_nodes = {"dk": engine.endpoint, "dm": MAIN_ENGINE}
    return {
        n: node_yaml(n, driver="docker", endpoint=e, cpu="2") for n, e in world.docker_nodes.items()
    }


def kill(driver: str, world: World, node: str, instance_id: str) -> None:
    if driver == "process":
        os.kill(pid_of(instance_id), signal.SIGKILL)
        return
    host = world.docker_nodes[node]
    subprocess.run(["docker", "-H", host, "kill", instance_id], check=True, capture_output=True)


@pytest.mark.parametrize("driver", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_a_read_write_once_volume_keeps_its_replica_on_its_node(
    world: World, driver: str, request: pytest.FixtureRequest
) -> None:
    nodes = nodes_for(world, driver, request)
    port = free_port()

    def files(version: str, cordon: str | None = None) -> dict[str, str | None]:
        out: dict[str, str | None] = {
            f"{name}.yaml": text + ("  unschedulable: true\n" if name == cordon else "")
            for name, text in nodes.items()
        }
        out["counter.yaml"] = counter_service(
            "counter", driver=driver, port=port, version=version, linger_ms=1000
        )
        out["data.yaml"] = volume_yaml(size="64Mi")
        return out

    commit(world.repo, files("1"), "a counter on two nodes")
    daemon = world.daemon()
    first = wait_for("the counter", lambda: running_on(daemon), TIMEOUT, describe=daemon.log_tail)
    home = first["node"]
    other = next(n for n in nodes if n != home)

    kill(driver, world, home, first["id"])
    replaced = wait_for(
        "the replacement",
        lambda: (i := running_on(daemon)) and i["id"] != first["id"] and i,
        TIMEOUT,
        describe=daemon.log_tail,
    )
    assert replaced["node"] == home
    for version in ("2", "3", "4"):
        commit(world.repo, files(version), f"version {version}")
        seen = wait_for(
            f"version {version}",
            lambda v=version: (p := page(port)) and p.get("version") == v and p,  # type: ignore[misc]
            TIMEOUT,
            describe=daemon.log_tail,
        )
        assert running_on(daemon)["node"] == home  # type: ignore[index]
        assert seen["conflicts"] == "0", seen  # never two writers, checked by the service
    assert page(port)["starts"] == "5"  # type: ignore[index]

    # Its node cordoned: a dead replica is not replaced elsewhere, and the plan says why.
    commit(world.repo, files("4", cordon=home), f"cordon {home}")
    # A pass has applied the cordon once `gitorch nodes` shows it (the Node as applied).
    wait_for(
        "the cordon",
        lambda: nodes_json(world.state, world.root)[home]["unschedulable"],
        30,
        describe=daemon.log_tail,
    )
    victim = running_on(daemon)
    assert victim is not None
    kill(driver, world, home, victim["id"])

    def planned_wait() -> str | None:
        _, plan = plan_json(world.repo, world.state, world.root)
        waits = [a["reason"] for a in plan["actions"] if a["action"] == "wait"]
        return next((w for w in waits if "cannot be placed" in w), None)

    reason = wait_for("the plan's reason", planned_wait, TIMEOUT, describe=daemon.log_tail)
    assert f"{home}: cordoned (unschedulable)" in reason
    assert f"{other}: ReadWriteOnce volume data is bound to node {home}" in reason
    svc = daemon.service("counter")
    assert svc is not None and all(i["state"] != "running" for i in svc["instances"])

    commit(world.repo, files("4"), f"uncordon {home}")
    back = wait_for("back home", lambda: running_on(daemon), TIMEOUT, describe=daemon.log_tail)
    assert back["node"] == home
    final = wait_for(
        "the count", lambda: (p := page(port)) and p.get("starts") == "6" and p, TIMEOUT
    )
    assert final["conflicts"] == "0"
