"""Which remote hosts run an ingress, and what each serves (gitorch/decide/ingress.py).

Pure-logic tests over hand-built live states and tables; tests/multihost checks the same
rules on a rig of real hosts.
"""

from __future__ import annotations

from types import MappingProxyType

from decide_helpers import load_docs

from gitorch.decide.actions import RemoveIngress, StartIngress, StartReplica
from gitorch.decide.ingress import decide_ingress
from gitorch.live.model import LiveIngress, LiveNode, LiveReplica, LiveService, LiveState
from gitorch.manifests.model import DesiredState
from gitorch.traffic.table import Backend, Fence, Route, RoutingTable, TlsFiles

REVISION = "b" * 40
IMAGE = "gitorch-ingress:1-abc"


def service(name: str, *, port: int | None, depends_on: tuple[str, ...] = ()) -> str:
    text = f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  image: example/{name}:1
  replicas: 2
  ports:
    - {{name: http, containerPort: 8080}}
"""
    if port is not None:
        text += f"  expose: {{port: {port}, targetPort: http}}\n"
    if depends_on:
        text += f"  dependsOn: [{', '.join(depends_on)}]\n"
    return text


def shop() -> DesiredState:
    """web (exposed) calls api (exposed); batch (not exposed) calls api too."""
    return load_docs(
        service("api", port=7001),
        service("web", port=7002, depends_on=("api",)),
        service("batch", port=None, depends_on=("api",)),
        revision=REVISION,
    )


def node(
    name: str,
    address: str,
    *,
    ready: bool = True,
    mode: str = "replicas",
    ingress: LiveIngress | None = None,
) -> LiveNode:
    return LiveNode(name, "docker", ready, address, 2000, 2**31, ingress_mode=mode, ingress=ingress)


def running(service: str, node: str, slot: int = 1) -> LiveReplica:
    return LiveReplica(
        id=f"{service}-{node}-{slot}",
        name=f"c-{service}-{slot}",
        service=service,
        replica=f"{service}-{slot}",
        node=node,
        revision=REVISION,
        template_digest="t",
        state="running",
    )


def live_of(nodes: list[LiveNode], replicas: list[LiveReplica]) -> LiveState:
    services = {
        name: LiveService(name, None, tuple(r for r in replicas if r.service == name))
        for name in {r.service for r in replicas}
    }
    return LiveState(
        "c",
        0.0,
        MappingProxyType({n.name: n for n in nodes}),
        MappingProxyType(services),
    )


def table(*, tls_on: str | None = None) -> RoutingTable:
    """api and web, each with a backend on h3 (the table lists backends on every host)."""
    routes = {}
    for name, port in (("api", 7001), ("web", 7002)):
        tls = TlsFiles("c.pem", "k.pem") if name == tls_on else None
        routes[name] = Route(
            name, port, backends=(Backend(f"{name}-b", "10.0.0.3:40000"),), tls=tls
        )
    return RoutingTable(MappingProxyType(routes))


def test_a_host_serves_what_its_replicas_serve_and_call_and_others_get_nothing() -> None:
    live = live_of(
        [node("h1", "10.0.0.1"), node("h2", "10.0.0.2"), node("h3", "10.0.0.3")],
        [running("web", "h1"), running("batch", "h2")],
    )
    decision = decide_ingress(shop(), live, table(), image=IMAGE)

    assert sorted(decision.hosts) == ["h1", "h2"]  # h3 runs nothing
    assert sorted(decision.hosts["h1"].table.routes) == ["api", "web"]  # web, and what it calls
    assert sorted(decision.hosts["h2"].table.routes) == ["api"]  # batch calls api
    # The backends are the whole table's: any host answers for any service it serves.
    assert decision.hosts["h1"].table.routes["api"].backends[0].address == "10.0.0.3:40000"
    starts = {a.node: a for a in decision.starts}
    assert sorted(starts) == ["h1", "h2"] and not decision.removes
    assert starts["h1"].reason == "runs web; its replicas call api"
    assert starts["h2"].reason == "its replicas call api"
    # Replicas reach their dependencies at their own host's address.
    assert dict(decision.addresses) == {"h1": "10.0.0.1", "h2": "10.0.0.2"}


def test_a_replica_started_this_pass_counts_before_it_runs() -> None:
    live = live_of([node("h1", "10.0.0.1")], [])
    start = StartReplica("web", "web-1", 1, "t", "h1", "placed")
    decision = decide_ingress(shop(), live, table(), [start], image=IMAGE)
    assert [a.node for a in decision.starts] == ["h1"]


def test_always_serves_everything_and_never_serves_nothing() -> None:
    live = live_of(
        [node("h1", "10.0.0.1", mode="always"), node("h2", "10.0.0.2", mode="never")],
        [running("web", "h2")],
    )
    decision = decide_ingress(shop(), live, table(), image=IMAGE)
    assert sorted(decision.hosts) == ["h1"]
    assert sorted(decision.hosts["h1"].table.routes) == ["api", "web"]
    assert [(a.node, a.reason) for a in decision.starts] == [("h1", "spec.ingress: always")]
    assert "h2" not in decision.addresses  # its replicas use the daemon's ingress


def test_an_ingress_of_another_image_or_dead_is_replaced_and_a_useless_one_removed() -> None:
    old = LiveIngress("gitorch-ingress:0-old", True, "running")
    dead = LiveIngress(IMAGE, False, "exited")
    current = LiveIngress(IMAGE, True, "running")
    live = live_of(
        [
            node("h1", "10.0.0.1", ingress=old),
            node("h2", "10.0.0.2", ingress=dead),
            node("h3", "10.0.0.3", ingress=current),
            node("h4", "10.0.0.4", ingress=current),
        ],
        [running("web", "h1"), running("web", "h2", 2), running("web", "h3", 3)],
    )
    decision = decide_ingress(shop(), live, table(), image=IMAGE)
    assert {a.node: a.reason for a in decision.starts} == {
        "h1": f"it runs gitorch-ingress:0-old, not {IMAGE}",
        "h2": "it is exited",
    }
    assert [(a.node, a.reason) for a in decision.removes] == [
        ("h4", "no replica here serves or calls an exposed service")
    ]
    assert all(isinstance(a, StartIngress | RemoveIngress) for a in decision.actions())


def test_a_host_that_does_not_answer_is_left_alone() -> None:
    """Nothing can be started or removed there; its ingress (if it still runs) keeps its
    last table, and its replicas are listed unreachable by the daemon's table."""
    live = live_of(
        [node("h1", "10.0.0.1", ready=False, ingress=LiveIngress(IMAGE, True, "running"))],
        [running("web", "h1")],
    )
    decision = decide_ingress(shop(), live, table(), image=IMAGE)
    assert not decision.hosts and not decision.actions() and not decision.addresses


def test_a_route_that_terminates_tls_stays_on_the_daemons_host_and_says_so() -> None:
    live = live_of([node("h1", "10.0.0.1")], [running("web", "h1")])
    decision = decide_ingress(shop(), live, table(tls_on="web"), image=IMAGE)
    host = decision.hosts["h1"]
    assert sorted(host.table.routes) == ["api"]
    assert "terminates TLS" in host.left_out["web"]
    assert host.to_json()["leftOut"] == dict(host.left_out)


def test_nodes_sharing_an_address_share_one_ingress() -> None:
    live = live_of(
        [
            node("a", "10.0.0.1"),
            node("b", "10.0.0.1", ingress=LiveIngress(IMAGE, True, "running")),
        ],
        [running("web", "b")],
    )
    decision = decide_ingress(shop(), live, table(), image=IMAGE)
    assert sorted(decision.hosts) == ["a"]  # the first by name runs it
    assert [a.node for a in decision.starts] == ["a"]
    assert [(a.node, a.reason) for a in decision.removes] == [("b", "a runs this host's ingress")]
    assert dict(decision.addresses) == {"a": "10.0.0.1", "b": "10.0.0.1"}


def test_each_host_table_is_fenced_on_its_own_replicas_after_the_grace() -> None:
    live = live_of(
        [node("h1", "10.0.0.1"), node("h2", "10.0.0.2")],
        [running("web", "h1"), running("api", "h1"), running("batch", "h2")],
    )
    assert decide_ingress(shop(), live, table(), image=IMAGE).hosts["h1"].table.fence is None
    decision = decide_ingress(shop(), live, table(), image=IMAGE, fence_after=30.0)
    fences = {n: h.table.fence for n, h in decision.hosts.items()}
    assert fences["h1"] == Fence(30.0, frozenset({"web-h1-1", "api-h1-1"}))
    assert fences["h2"] == Fence(30.0, frozenset({"batch-h2-1"}))
