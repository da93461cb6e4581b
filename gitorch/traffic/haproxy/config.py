"""HAProxy's configuration for a routing table (pure: no process, no socket).

What it renders per route:

* a frontend bound to ``host:port`` (``mode http`` or ``mode tcp``);
* a main backend ``be_<service>`` holding *every* version's servers: HAProxy has no
  weighted ``use_backend``, so the version split is done with per-server weights. A
  version of weight ``W`` with servers of ``Backend.weight`` ``w_i`` gets, per server,
  ``W * w_i / sum(w)``, scaled so the largest is 256 (HAProxy's maximum). A weighted
  version without an active server simply has no weight in the pool, so the others take
  its share (no 503 while any server is up). Empty ``weights``: ``Backend.weight`` as is.
* http only, per version a *group* backend ``be_<service>_g<k>`` with that version's
  servers again (HAProxy servers belong to one backend, so each backend appears in two:
  the main one and its version's group). Header/cookie rules are ACLs sending matching
  requests to their version's group (``use_backend ... if rule { nbsrv(group) gt 0 }``,
  so a version without a live server falls back to the weighted split). Regexes are
  anchored (``^(?:re)$``) to keep ``VersionRule``'s full-match meaning.
* stickiness per *version*, not per server (``cookie ... insert`` would pin a client to
  one server, and HAProxy honours that cookie even for a draining or weight-0 server): the
  frontend looks the ``gitorch_v_<service>`` cookie up in a map (version -> group backend)
  holding only versions whose weight is above 0 and that have a live server; the main
  backend adds ``Set-Cookie: gitorch_v_<service>=<version>; Path=/`` from a second map
  (server name -> version). Both maps change through the runtime API.

Servers are fixed *slots* (``slots_per_version`` per group, plus a spare group for the
next version), rendered as explicit ``server`` lines carrying the current address, weight
and state: a reload starts the new worker already right (a ``server-template`` would
start it with every slot empty until the runtime API caught up, which loses requests).
:func:`plan_layout` keeps every backend that stays on its slot, so a runtime update moves
nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitorch.traffic.routes import RouteInvalid, check_route, sticky_cookie
from gitorch.traffic.table import Backend, Route, VersionRule
from gitorch.traffic.wire import route_from_json, route_to_json

MAX_WEIGHT = 256
#: A free slot points here, in maintenance: never connected to.
PLACEHOLDER = ("127.0.0.1", 1)
#: Matched with fullmatch: "$" would also accept a name ending in a newline, which would
#: break (or extend) the rendered configuration.
_TOKEN = re.compile(r"[!#$%&*+\-.^_`|~0-9A-Za-z]+")
_UNQUOTABLE = re.compile(r"['\r\n\0]")


@dataclass(frozen=True)
class Server:
    """What one HAProxy server line should say."""

    host: str
    port: int
    weight: int
    state: str  # ready | drain | maint


@dataclass
class Layout:
    """How one route is laid out on HAProxy's fixed slots."""

    route: Route
    groups: list[str | None]  # version held by each group (None: free)
    slots: list[list[str | None]]  # backend id per slot, per group

    @property
    def http(self) -> bool:
        return self.route.protocol == "http"

    def slot_of(self, backend_id: str) -> tuple[int, int] | None:
        for k, group in enumerate(self.slots):
            for j, held in enumerate(group):
                if held == backend_id:
                    return k, j
        return None

    def group_of(self, version: str) -> int | None:
        return self.groups.index(version) if version in self.groups else None

    def to_json(self) -> dict[str, Any]:
        return {"route": route_to_json(self.route), "groups": self.groups, "slots": self.slots}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layout:
        return cls(route_from_json(data["route"]), list(data["groups"]), list(data["slots"]))

    def structure(self) -> tuple[object, ...]:
        """Everything that needs a reload when it changes."""
        rule_groups = tuple(self.group_of(r.version) for r in self.route.rules)
        route = self.route
        return (
            route.port,
            route.protocol,
            route.sticky,
            route.rules,
            rule_groups,
            len(self.groups),
            len(self.slots[0]) if self.slots else 0,
        )


def plan_layout(route: Route, old: Layout | None, slots_per_version: int) -> Layout:
    """Place ``route``'s backends on slots, keeping every backend that stays where it was
    (so a runtime update moves nothing) and every version in its group."""
    versions: list[str] = []
    for backend in route.backends:
        if backend.version not in versions:
            versions.append(backend.version)
    per_version: dict[str, list[Backend]] = {v: [] for v in versions}
    for backend in route.backends:
        per_version[backend.version].append(backend)
    needed = max([slots_per_version, *(len(b) for b in per_version.values())])
    compatible = old is not None and old.route.protocol == route.protocol
    # Slots and groups that serve the old table. A new backend goes to a slot that was
    # free already: a slot just vacated would have to be re-pointed from its old replica
    # to the new one, out of rotation meanwhile, and if those were all the route's
    # servers, nothing would serve for a moment. Reused only when nothing else is free.
    held: set[tuple[int, int]] = set()
    if old is not None and compatible:
        held = {(k, j) for k, grp in enumerate(old.slots) for j, b in enumerate(grp) if b}
        groups = [g if g in per_version else None for g in old.groups]
        width = len(old.slots[0]) if old.slots else slots_per_version
        slots = [
            [b if b is not None and old.groups[k] == groups[k] else None for b in group]
            for k, group in enumerate(old.slots)
        ]
    else:
        groups, width, slots = [], slots_per_version, []
    if needed > width:
        width = needed
        slots = [group + [None] * (width - len(group)) for group in slots]
    grew = not groups
    for version in versions:
        if version in groups:
            continue
        if None in groups:
            free = [k for k, held_by in enumerate(groups) if held_by is None]
            k = min(free, key=lambda k: any((k, j) in held for j in range(width)))
            groups[k] = version
            slots[k] = [None] * width
        else:
            groups.append(version)
            slots.append([None] * width)
            grew = True
    # One spare group whenever the layout is (re)made: the next version of a rollout then
    # arrives without a reload (the old version's group is freed when it is gone).
    if grew and None not in groups:
        groups.append(None)
        slots.append([None] * width)
    for version, members in per_version.items():
        k = groups.index(version)
        wanted = {b.id for b in members}
        slots[k] = [b if b in wanted else None for b in slots[k]]
        for backend in members:
            if backend.id not in slots[k]:
                free = [j for j, held_by in enumerate(slots[k]) if held_by is None]
                slots[k][min(free, key=lambda j: (k, j) in held)] = backend.id
    return Layout(route, groups, slots)


def main_weights(route: Route) -> dict[str, int]:
    """HAProxy weight of each backend in the main backend (see the module docstring)."""
    active = [b for b in route.backends if not b.draining and b.weight > 0]
    shares: dict[str, float] = {}
    if route.weights:
        totals: dict[str, int] = {}
        for backend in active:
            totals[backend.version] = totals.get(backend.version, 0) + backend.weight
        for backend in active:
            version_weight = route.weights.get(backend.version, 0)
            if version_weight > 0:
                shares[backend.id] = version_weight * backend.weight / totals[backend.version]
    if not shares:  # no weights, or no weighted version has a live backend
        shares = {b.id: float(b.weight) for b in active}
    if not shares:
        return {}
    top = max(shares.values())
    return {bid: max(1, round(MAX_WEIGHT * share / top)) for bid, share in shares.items()}


def check_haproxy_route(route: Route) -> None:
    """What this data plane cannot render, refused before anything changes."""
    check_route(route)
    if route.tls is not None:
        raise RouteInvalid(
            f"service {route.service}: expose.tls is served by the built-in data plane only "
            "(HAProxy would need the key copied into its own files)"
        )
    if not _TOKEN.fullmatch(route.service):
        raise RouteInvalid(f"service name {route.service!r} cannot be used in HAProxy")
    for rule in route.rules:
        name = rule.header if rule.header is not None else rule.cookie
        if name is None or not _TOKEN.fullmatch(name):
            raise RouteInvalid(f"service {route.service}: bad header or cookie name {name!r}")
        for value in (rule.exact, rule.regex):
            if value is not None and _UNQUOTABLE.search(value):
                raise RouteInvalid(
                    f"service {route.service}: rule value {value!r} holds a quote or a "
                    "line break, which the HAProxy data plane cannot express"
                )


def _quote(value: str) -> str:
    return f"'{value}'"  # HAProxy's strong quoting: nothing inside is interpreted


@dataclass
class Renderer:
    """Renders and names the files of one HAProxy working directory.

    ``log``: where http frontends send their request log and in which format (None: no
    request log, so no latency percentiles).
    """

    workdir: Path
    host: str
    admin_sock: Path
    log: tuple[tuple[str, int], str] | None = None

    def servers(self, layouts: Mapping[str, Layout]) -> dict[str, Server]:
        wanted: dict[str, Server] = {}
        for name, layout in layouts.items():
            route = layout.route
            by_id = {b.id: b for b in route.backends}
            main = main_weights(route)
            for k, group in enumerate(layout.slots):
                for j, backend_id in enumerate(group):
                    backend = by_id.get(backend_id) if backend_id is not None else None
                    if backend is None:
                        free = Server(*PLACEHOLDER, 0, "maint")
                        wanted[f"be_{name}/g{k}s{j}"] = free
                        if layout.http:
                            wanted[f"be_{name}_g{k}/s{j}"] = free
                        continue
                    state = "drain" if backend.draining else "ready"
                    wanted[f"be_{name}/g{k}s{j}"] = Server(
                        backend.host, backend.port, main.get(backend.id, 0), state
                    )
                    if layout.http:
                        own = min(MAX_WEIGHT, backend.weight)
                        wanted[f"be_{name}_g{k}/s{j}"] = Server(
                            backend.host, backend.port, own, state
                        )
        return wanted

    def sticky_map(self, name: str) -> Path:
        return self.workdir / f"{name}.sticky.map"

    def server_map(self, name: str) -> Path:
        return self.workdir / f"{name}.servers.map"

    def maps(self, layouts: Mapping[str, Layout]) -> dict[Path, dict[str, str]]:
        maps: dict[Path, dict[str, str]] = {}
        for name, layout in layouts.items():
            if not (layout.http and layout.route.sticky):
                continue
            route = layout.route
            live = {b.version for b in route.active() if b.weight > 0}
            sticky: dict[str, str] = {}
            servers: dict[str, str] = {}
            for k, version in enumerate(layout.groups):
                if version is None:
                    continue
                if route.weights.get(version, 0) > 0 and version in live:
                    sticky[version] = f"be_{name}_g{k}"
                for j in range(len(layout.slots[k])):
                    servers[f"g{k}s{j}"] = version
            maps[self.sticky_map(name)] = sticky
            maps[self.server_map(name)] = servers
        return maps

    # ------------------------------------------------------------------ rendering

    def render(self, layouts: Mapping[str, Layout], servers: Mapping[str, Server]) -> str:
        """The whole configuration for ``layouts``."""
        lines = [
            "global",
            "    master-worker",
            f"    stats socket {self.admin_sock} mode 600 level admin expose-fd listeners",
            "    hard-stop-after 60s",  # an old worker never outlives a minute after reload
            "",
            "defaults",
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout http-keep-alive 60s",
            "    timeout queue 5s",
            # Idle pooled connections to a server nobody uses any more (draining, removed)
            # are closed within a few tenths of a second: a stopping replica can exit.
            # Busy servers keep theirs (HAProxy purges only beyond the recent need).
            "    default-server pool-purge-delay 100ms",
            "",
        ]
        for name, layout in layouts.items():
            lines += self._render_route(name, layout, servers)
        return "\n".join(lines) + "\n"

    def _render_route(self, name: str, layout: Layout, servers: Mapping[str, Server]) -> list[str]:
        route = layout.route
        mode = route.protocol
        out = [f"frontend fe_{name}", f"    mode {mode}", f"    bind {self.host}:{route.port}"]
        if layout.http:
            out += ["    option idle-close-on-response", "    option http-keep-alive"]
            if self.log is not None:
                (host, port), log_format = self.log
                out += [
                    f"    log {host}:{port} len 512 format raw daemon",
                    f'    log-format "{log_format}"',
                ]
            for index, rule in enumerate(route.rules):
                k = layout.group_of(rule.version)
                if k is None:
                    continue  # no server of that version yet: the weighted split serves
                acls, condition = self._render_rule(index, rule)
                out += acls
                out.append(
                    f"    use_backend be_{name}_g{k} if {condition} {{ nbsrv(be_{name}_g{k}) gt 0 }}"
                )
            if route.sticky:
                cookie = sticky_cookie(name)
                sticky_map = self.sticky_map(name)
                out += [
                    f"    http-request set-var(txn.gv) req.cook({cookie})",
                    f"    use_backend %[var(txn.gv),map({sticky_map})] "
                    f"if {{ var(txn.gv),map({sticky_map}) -m found }}",
                ]
        out += [f"    default_backend be_{name}", ""]
        out += [f"backend be_{name}", f"    mode {mode}", "    balance roundrobin"]
        out += self._render_retries(layout)
        if layout.http and route.sticky:
            cookie = sticky_cookie(name)
            out.append(
                f'    http-response add-header Set-Cookie "{cookie}='
                f'%[srv_name,map({self.server_map(name)})]; Path=/"'
            )
        for k, group in enumerate(layout.slots):
            for j in range(len(group)):
                out.append(self._render_server(f"g{k}s{j}", servers[f"be_{name}/g{k}s{j}"]))
        out.append("")
        if layout.http:
            for k, group in enumerate(layout.slots):
                out += [f"backend be_{name}_g{k}", "    mode http", "    balance roundrobin"]
                out += self._render_retries(layout)
                for j in range(len(group)):
                    out.append(self._render_server(f"s{j}", servers[f"be_{name}_g{k}/s{j}"]))
                out.append("")
        return out

    @staticmethod
    def _render_retries(layout: Layout) -> list[str]:
        out = ["    retries 3", "    option redispatch 1"]
        if layout.http:
            # A request that never reached a server is sent to another one.
            out.append("    retry-on conn-failure empty-response")
        return out

    @staticmethod
    def _render_rule(index: int, rule: VersionRule) -> tuple[list[str], str]:
        """ACL lines of one rule, and the condition that is their AND (several ``acl``
        lines of one name would be ORed; exact and regex must both hold)."""
        fetch = (
            f"req.fhdr({rule.header})" if rule.header is not None else f"req.cook({rule.cookie})"
        )
        tests: list[str] = []
        if rule.exact is not None:
            tests.append(f"{fetch} -m str {_quote(rule.exact)}")
        if rule.regex is not None:
            tests.append(f"{fetch} -m reg {_quote(f'^(?:{rule.regex})$')}")
        if not tests:
            tests.append(f"{fetch} -m found")
        names = [f"rule{index}_{n}" for n in range(len(tests))]
        acls = [f"    acl {name} {test}" for name, test in zip(names, tests, strict=True)]
        return acls, " ".join(names)

    @staticmethod
    def _render_server(name: str, server: Server) -> str:
        line = f"    server {name} {server.host}:{server.port} weight {server.weight}"
        if server.state == "maint":
            line += " disabled"
        return line
