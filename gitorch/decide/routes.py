"""The routing table a pass publishes: pure, from the live replicas and the decisions.

Ready replicas serve; replicas the pass stops stay in the table marked draining (the data
plane sends them nothing new while their requests in flight finish); replicas of a node
that stopped answering are listed unreachable (their requests in flight are given up); a version the
service rolled back from never serves again, even while it drains; progressive rollouts
add their weights, header/cookie rules and the blue-green preview route.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType

from gitorch.decide.service import TrafficIntent, version_key
from gitorch.live.model import LiveReplica, LiveState
from gitorch.manifests.model import DesiredState, Service
from gitorch.traffic.table import Backend, Route, RoutingTable, TlsFiles, VersionRule


def routing_table(
    desired: DesiredState,
    live: LiveState,
    *,
    targets: Mapping[str, Service],
    intents: Mapping[str, TrafficIntent],
    failed: Mapping[str, str],
    draining: Collection[str] = (),
    gone: Collection[str] = (),
) -> RoutingTable:
    """``targets``: the spec each service rolls toward this pass; ``failed``: service ->
    template rolled back from; ``draining``: replica ids being stopped; ``gone``: replica
    ids already stopped."""
    routes: dict[str, Route] = {}
    for name, service in desired.services.items():
        target = targets.get(name, service)
        expose = service.expose or target.expose
        if expose is None:
            continue
        backends: list[Backend] = []
        live_service = live.services.get(name)
        failed_template = failed.get(name)
        for replica in live.lost_replicas:
            # Its node is lost: its slot is filled elsewhere, and whatever a data plane
            # still has in flight there is given up (never answered before the node is).
            address = replica.address_of(expose.target_port)
            if replica.service == name and replica.id not in gone and address is not None:
                backends.append(_backend(replica, address, draining=True, unreachable=True))
        for replica in live_service.replicas if live_service else ():
            if replica.id in gone:
                continue
            node = live.nodes.get(replica.node)
            if replica.state == "unknown" and node is not None and not node.ready:
                # Its node stopped answering: it may hold requests that will never be
                # answered. Listed as unreachable, the data plane gives them up (the
                # idempotent ones go elsewhere) and sends it nothing new.
                address = replica.address_of(expose.target_port)
                if address is not None:
                    backends.append(_backend(replica, address, draining=True, unreachable=True))
                continue
            if replica.state != "running":
                continue
            if failed_template is not None and replica.template_digest == failed_template:
                continue  # rolled back from: never serves again, even while it drains
            is_draining = replica.id in draining
            if not is_draining and not (replica.ready and not replica.needs_restart):
                continue
            address = replica.address_of(expose.target_port)
            if address is None:
                continue
            backends.append(_backend(replica, address, draining=is_draining))
        ordered = tuple(sorted(backends, key=lambda b: b.id))
        intent = intents.get(name)
        tls = TlsFiles(expose.tls.cert_file, expose.tls.key_file) if expose.tls else None
        if intent is None:
            routes[name] = Route(name, expose.port, expose.protocol, ordered, tls=tls)
            continue
        canary = target.strategy.canary
        routes[name] = Route(
            name,
            expose.port,
            expose.protocol,
            ordered,
            weights=MappingProxyType({version_key(t): w for t, w in intent.weights.items()}),
            rules=tuple(
                VersionRule(version_key(intent.target), r.header, r.cookie, r.exact, r.regex)
                for r in intent.match
            ),
            # strategy.canary.stickySessions: a client keeps its version while it weighs > 0.
            sticky=canary is not None and canary.sticky_sessions,
            tls=tls,
        )
        blue = target.strategy.blue_green
        if intent.preview and blue is not None and blue.preview_port:
            preview = tuple(b for b in ordered if b.version == version_key(intent.preview))
            # "." never occurs in a service name (DNS-1123 label), so no collision, and
            # HAProxy accepts it in proxy names ("~" made it refuse the configuration).
            routes[f"{name}.preview"] = Route(
                f"{name}.preview", blue.preview_port, expose.protocol, preview, tls=tls
            )
    return RoutingTable(routes)


def _backend(
    replica: LiveReplica, address: str, *, draining: bool, unreachable: bool = False
) -> Backend:
    return Backend(
        replica.id,
        address,
        version=(replica.template_digest or "")[:12],
        draining=draining,
        unreachable=unreachable,
    )
