"""What every data plane checks in a routing table, and the errors it raises (pure).

A table is checked whole before a data plane changes anything, so a bad table changes
nothing: weights must be integers >= 0, a rule names exactly one of header or cookie and
its regex compiles, two routes never share a port. A port that cannot be opened is a
:class:`ListenError` naming the route, whichever data plane tried.
"""

from __future__ import annotations

import errno
import re

from gitorch.errors import ConfigError
from gitorch.traffic.table import Route, RoutingTable

#: Prefix of the cookie that keeps a client on its version (``Route.sticky``).
STICKY_COOKIE = "gitorch_v_"


class ListenError(ConfigError):
    """A route's listen port could not be opened (in use, or not permitted)."""


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
