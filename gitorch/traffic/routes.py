"""What every data plane checks in a routing table, and the errors it raises (pure).

A table is checked whole before a data plane changes anything, so a bad table changes
nothing: weights must be integers >= 0, a rule names exactly one of header or cookie and
its regex compiles, two routes never share a port. A port that cannot be opened is a
:class:`ListenError` naming the route, whichever data plane tried.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from gitorch.errors import ConfigError
from gitorch.traffic.table import Backend, Route, RoutingTable, TlsFiles

#: Prefix of the cookie that keeps a client on its version (``Route.sticky``).
STICKY_COOKIE = "gitorch_v_"


class ListenError(ConfigError):
    """A route's listen port could not be opened (in use, or not permitted).

    ``routes`` maps each route that failed to why, so a caller can fail those services
    alone (the data planes apply every other route anyway, or can be asked again without
    the failed ones). Every line this error carries names its route the same way
    (``service NAME: ...``, as :func:`listen_failure` writes it), so the map survives the
    proxy's control channel, which carries the message and the detail lines.
    """

    def __init__(
        self,
        message: str,
        *,
        detail: tuple[str, ...] = (),
        routes: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, detail=detail)
        if routes is None:
            found: dict[str, str] = {}
            for line in (message, *detail):
                head, sep, _ = line.partition(": ")
                if sep and head.startswith("service ") and " " not in head[8:]:
                    found.setdefault(head[8:], line)
            routes = found
        self.routes: Mapping[str, str] = dict(routes)


class RouteInvalid(ConfigError):
    """A route cannot be served as written (a bad rule regex, a negative weight)."""


def sticky_cookie(service: str) -> str:
    """Name of the stickiness cookie of ``service``."""
    return f"{STICKY_COOKIE}{service}"


def check_route(route: Route) -> None:
    """Raise :class:`RouteInvalid` when ``route``'s weights or rules cannot be served."""
    if route.protocol not in ("http", "tcp"):
        raise RouteInvalid(f"service {route.service}: unknown protocol {route.protocol!r}")
    for version, weight in route.weights.items():
        if not isinstance(weight, int) or weight < 0:
            raise RouteInvalid(
                f"service {route.service}: weight of version {version!r} must be >= 0"
            )
    for rule in route.rules:
        if (rule.header is None) == (rule.cookie is None):
            raise RouteInvalid(
                f"service {route.service}: a rule names exactly one of header or cookie"
            )
        if rule.regex is not None:
            try:
                re.compile(rule.regex)
            except re.error as exc:
                raise RouteInvalid(
                    f"service {route.service}: bad rule regex {rule.regex!r}: {exc}"
                ) from exc


def check_table(table: RoutingTable) -> None:
    """Every route of ``table`` (:func:`check_route`), and no port claimed twice."""
    owner: dict[int, str] = {}
    for route in table.routes.values():
        check_route(route)
        other = owner.setdefault(route.port, route.service)
        if other != route.service:
            raise ListenError(
                f"service {route.service}: cannot listen on port {route.port}: "
                f"service {other} already uses it"
            )


def listen_failure(service: str, host: str, port: int, exc: OSError) -> str:
    """One line saying why ``service`` cannot listen on ``host:port``."""
    if exc.errno == errno.EADDRINUSE:
        why = "the port is already in use by another process or service"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
    else:
        why = exc.strerror or str(exc)
    return f"service {service}: cannot listen on {host}:{port}: {why}"


def resolve_tls(table: RoutingTable, secrets_dir: Path | None) -> RoutingTable:
    """``table`` with every route's TLS file names resolved under ``secrets_dir``."""
    if not any(route.tls for route in table.routes.values()):
        return table
    routes = {}
    for name, route in table.routes.items():
        if route.tls is not None:
            route = replace(
                route,
                tls=TlsFiles(
                    str(secret_path(secrets_dir, route.tls.cert_file, name)),
                    str(secret_path(secrets_dir, route.tls.key_file, name)),
                ),
            )
        routes[name] = route
    return RoutingTable(MappingProxyType(routes))


def secret_path(secrets_dir: Path | None, name: str, service: str) -> Path:
    """The file ``name`` under ``secrets_dir``; :class:`RouteInvalid` when there is no
    secrets directory or the name leaves it (absolute paths pass: already resolved)."""
    if os.path.isabs(name):
        return Path(name)
    if secrets_dir is None:
        raise RouteInvalid(
            f"service {service}: expose.tls names {name!r}, but no --secrets-dir was given"
        )
    root = secrets_dir.resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise RouteInvalid(f"service {service}: TLS file {name!r} leaves the secrets directory")
    return path


def fenced(table: RoutingTable) -> RoutingTable:
    """``table`` as a fenced ingress serves it (:class:`~gitorch.traffic.table.Fence`): its
    own host's backends draining in every route where a backend on another host may still
    take traffic; routes served only from its own host are left as they are (nothing else
    could answer their clients)."""
    fence = table.fence
    if fence is None or not fence.own:
        return table
    routes: dict[str, Route] = {}
    for name, route in table.routes.items():
        elsewhere = [b for b in route.backends if b.id not in fence.own and not b.draining]
        if not elsewhere:
            routes[name] = route
            continue
        backends: tuple[Backend, ...] = tuple(
            replace(b, draining=True) if b.id in fence.own else b for b in route.backends
        )
        routes[name] = replace(route, backends=backends)
    return replace(table, routes=MappingProxyType(routes))
