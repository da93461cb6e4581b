"""The routing table of a pass when a node stops answering (gitorch/decide/routes.py):
its replicas are listed unreachable and draining (the data plane gives up their requests
in flight and sends them nothing new), and stale replicas of a node that came back drain."""

from __future__ import annotations

from types import MappingProxyType

from decide_helpers import load_docs

from gitorch.decide.routes import routing_table
from gitorch.live.model import LiveNode, LiveReplica, LiveService, LiveState

SERVICE = """apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: shop
spec:
  image: example/shop:1
  replicas: 3
  ports:
    - {name: http, containerPort: 8080}
  expose: {port: 7100, targetPort: http}
"""


def replica(slot: int, node: str, state: str) -> LiveReplica:
    return LiveReplica(
        id=f"r{slot}",
        name=f"c{slot}",
        service="shop",
        replica=f"shop-{slot}",
        node=node,
        revision="r",
        template_digest="t" * 12,
        state=state,
        address=f"10.0.0.{slot}:4000{slot}",
        ready=state == "running",
    )


def test_replicas_of_a_silent_node_are_unreachable_and_stale_ones_drain() -> None:
    desired = load_docs(SERVICE, revision="r")
    nodes = {
        "h1": LiveNode("h1", "docker", True, "10.0.0.1", 2000, 2**31),
        "h2": LiveNode("h2", "docker", False, "10.0.0.2", 2000, 2**31, message="timed out"),
    }
    replicas = (
        replica(1, "h1", "running"),
        replica(2, "h2", "unknown"),
        replica(3, "h1", "running"),
    )
    live = LiveState(
        "c",
        0.0,
        MappingProxyType(nodes),
        MappingProxyType({"shop": LiveService("shop", None, replicas)}),
    )
    table = routing_table(
        desired,
        live,
        targets={"shop": desired.services["shop"]},
        intents={},
        failed={},
        draining={"r3"},  # e.g. a stale copy of a node that came back
    )
    backends = {b.id: b for b in table.routes["shop"].backends}
    assert not backends["r1"].draining and not backends["r1"].unreachable
    assert backends["r2"].unreachable and backends["r2"].draining
    assert backends["r2"].address == "10.0.0.2:40002"
    assert backends["r3"].draining and not backends["r3"].unreachable


def test_replicas_of_a_lost_node_stay_listed_unreachable() -> None:
    """Lost at the first pass that found it silent, its replicas left the service (their
    slots go elsewhere) but the table still lists them, unreachable: a data plane gives up
    what it has in flight there instead of waiting for the node's return."""
    desired = load_docs(SERVICE, revision="r")
    nodes = {
        "h1": LiveNode("h1", "docker", True, "10.0.0.1", 2000, 2**31),
        "h2": LiveNode("h2", "docker", False, "10.0.0.2", 2000, 2**31, message="timed out"),
    }
    live = LiveState(
        "c",
        0.0,
        MappingProxyType(nodes),
        MappingProxyType({"shop": LiveService("shop", None, (replica(1, "h1", "running"),))}),
        lost_replicas=(replica(2, "h2", "unknown"),),
    )
    table = routing_table(
        desired, live, targets={"shop": desired.services["shop"]}, intents={}, failed={}
    )
    backends = {b.id: b for b in table.routes["shop"].backends}
    assert sorted(backends) == ["r1", "r2"]
    assert backends["r2"].unreachable and backends["r2"].draining
    assert not backends["r1"].draining
