"""Where exposed services enter: an ingress on every host that needs one (pure).

The daemon's own host serves every exposed service through its data plane (``gitorch
proxy``), as it always has; it also serves the nodes that share it (process nodes, a local
Docker socket, a node whose address is a loopback one). A *remote* host, a Docker engine
reached over tcp or ssh at an address of its own, gets an ingress of its own: ``gitorch
proxy`` in a container on that engine (:mod:`gitorch.apply.ingress`), listening on the
host's address. Its routing table holds:

* every exposed service that has a replica on the host (running, or started this pass),
  so any host that runs a service answers for it;
* every exposed service that one of those depends on, so a replica reaches its
  dependencies through its own host's ingress (discovery, :mod:`gitorch.traffic.discovery`);
* every exposed service, with the Node's ``spec.ingress: always``; none with ``never``.

The backends are the same as the daemon's table: ready replicas on every host, at their
``host:port``, so a host answers even for a service whose replicas all run elsewhere. A
route that terminates TLS is left out of remote ingresses (its key stays on the daemon's
host), and the decision says so. Nodes that share one address share one ingress, run on
the first of them by name.

Starting, replacing and removing an ingress are actions of the pass (``gitorch plan``
lists them); publishing each host's table is what the executor does with
:attr:`IngressDecision.hosts` after the replicas start, as with the daemon's own table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from gitorch.decide.actions import RemoveIngress, StartIngress, StartReplica
from gitorch.live.model import LiveState
from gitorch.manifests.model import INGRESS_ALWAYS, INGRESS_NEVER, DesiredState
from gitorch.traffic.table import Fence, Route, RoutingTable

#: Engine states in which an ingress container will not come back by itself.
_DEAD = frozenset({"exited", "dead", "created", "removing"})


@dataclass(frozen=True)
class HostTable:
    """What one remote host's ingress serves, and what it leaves out (route -> why)."""

    node: str  # the node whose engine runs the ingress
    address: str
    table: RoutingTable
    left_out: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "address": self.address,
            "routes": sorted(self.table.routes),
            "leftOut": dict(self.left_out),
        }


@dataclass(frozen=True)
class IngressDecision:
    """The hosts' ingresses for one pass."""

    #: node -> the table its ingress serves (Ready hosts that need one).
    hosts: Mapping[str, HostTable] = field(default_factory=lambda: MappingProxyType({}))
    starts: tuple[StartIngress, ...] = ()
    removes: tuple[RemoveIngress, ...] = ()
    #: node -> the address its replicas reach their dependencies at (its host's ingress);
    #: nodes absent share the daemon's host.
    addresses: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def actions(self) -> tuple[StartIngress | RemoveIngress, ...]:
        return (*self.starts, *self.removes)


def decide_ingress(
    desired: DesiredState,
    live: LiveState,
    table: RoutingTable,
    starts: Sequence[StartReplica] = (),
    image: str | None = None,
    fence_after: float | None = None,
) -> IngressDecision:
    """The ingresses of every remote host (see the module docstring). ``table``: the
    pass's full routing table; ``starts``: the replicas this pass starts; ``image``: the
    ingress image this gitorch runs (None: not compared, only presence); ``fence_after``:
    the nodes' grace, after which a host's ingress that hears nothing withdraws its own
    host's replicas (:class:`~gitorch.traffic.table.Fence`; None: never)."""
    hosts: dict[str, list[str]] = {}  # address -> nodes with an ingress mode
    for name in sorted(live.nodes):
        node = live.nodes[name]
        if node.ingress_mode != INGRESS_NEVER:
            hosts.setdefault(node.address, []).append(name)
    on_node: dict[str, set[str]] = {}  # node -> services with a replica there
    ids_on_node: dict[str, set[str]] = {}  # node -> its replicas' ids (whatever their state)
    for replica in live.replicas():
        ids_on_node.setdefault(replica.node, set()).add(replica.id)
        if replica.state in ("running", "created"):
            on_node.setdefault(replica.node, set()).add(replica.service)
    for start in starts:
        on_node.setdefault(start.node, set()).add(start.service)

    served: dict[str, HostTable] = {}
    addresses: dict[str, str] = {}
    start_actions: list[StartIngress] = []
    remove_actions: list[RemoveIngress] = []
    for address, names in sorted(hosts.items()):
        ready = [n for n in names if live.nodes[n].ready]
        if not ready:
            continue  # nothing can be done on a host that does not answer
        runner = ready[0]
        for other in ready[1:]:
            if live.nodes[other].ingress is not None:
                remove_actions.append(
                    RemoveIngress(other, address, f"{runner} runs this host's ingress")
                )
        always = any(live.nodes[n].ingress_mode == INGRESS_ALWAYS for n in names)
        services = set().union(*(on_node.get(n, set()) for n in names))
        wanted, reason = _routes_for(desired, table, services, always)
        observed = live.nodes[runner].ingress
        if not wanted:
            if observed is not None:
                remove_actions.append(RemoveIngress(runner, address, reason))
            continue
        host_table, left_out = _host_table(table, wanted)
        if fence_after is not None:
            own = frozenset().union(*(ids_on_node.get(n, set()) for n in names))
            host_table = replace(host_table, fence=Fence(fence_after, own))
        served[runner] = HostTable(runner, address, host_table, MappingProxyType(left_out))
        for name in names:
            addresses[name] = address
        if observed is None:
            start_actions.append(StartIngress(runner, address, reason))
        elif image is not None and observed.image != image:
            start_actions.append(
                StartIngress(runner, address, f"it runs {observed.image}, not {image}")
            )
        elif not observed.running and observed.status in _DEAD:
            start_actions.append(StartIngress(runner, address, f"it is {observed.status}"))
    return IngressDecision(
        MappingProxyType(served),
        tuple(start_actions),
        tuple(remove_actions),
        MappingProxyType(addresses),
    )


def _routes_for(
    desired: DesiredState, table: RoutingTable, services: set[str], always: bool
) -> tuple[set[str], str]:
    """The routes a host serves, and why (or why none)."""
    if always:
        return set(table.routes), "spec.ingress: always"
    exposed = {name for name in services if name in desired.services}
    needed: set[str] = set()
    for name in sorted(exposed):
        service = desired.services[name]
        if service.expose is not None:
            needed.add(name)
        needed.update(dep for dep in service.depends_on if dep in desired.services)
    routes = {r for r in table.routes if r.split(".", 1)[0] in needed}
    if not routes:
        return set(), "no replica here serves or calls an exposed service"
    runs = sorted(n for n in exposed if desired.services[n].expose is not None)
    calls = sorted({r.split(".", 1)[0] for r in routes} - set(runs))
    parts = [f"runs {', '.join(runs)}"] if runs else []
    if calls:
        parts.append(f"its replicas call {', '.join(calls)}")
    return routes, "; ".join(parts)


def _host_table(table: RoutingTable, wanted: set[str]) -> tuple[RoutingTable, dict[str, str]]:
    routes: dict[str, Route] = {}
    left_out: dict[str, str] = {}
    for name in sorted(wanted):
        route = table.routes.get(name)
        if route is None:
            continue
        if route.tls is not None:
            left_out[name] = (
                "terminates TLS: served by the daemon's host only (the key stays there)"
            )
            continue
        routes[name] = route
    return RoutingTable(MappingProxyType(routes)), left_out
