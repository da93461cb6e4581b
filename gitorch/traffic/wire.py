"""Routing tables and figures as JSON: what the proxy's control socket carries and what a
data plane keeps on disk to be picked up again (pure).

JSON rather than pickle: the two ends may run different gitorch versions (a daemon
upgraded while the proxy keeps serving), and nothing read from a socket or a file can
run code. Unknown fields are ignored and missing optional ones take their defaults, so a
newer daemon and an older proxy (or the reverse) still understand each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from gitorch.errors import ConfigError
from gitorch.traffic.figures import BackendFigures, VersionFigures, empty_histogram
from gitorch.traffic.table import (
    Backend,
    BackendStats,
    Fence,
    Route,
    RoutingTable,
    TlsFiles,
    VersionRule,
)


class WireError(ConfigError):
    """A message or file that does not hold what it should."""


def route_to_json(route: Route) -> dict[str, Any]:
    data: dict[str, Any] = {
        "service": route.service,
        "port": route.port,
        "protocol": route.protocol,
        "backends": [
            {
                "id": b.id,
                "address": b.address,
                "version": b.version,
                "weight": b.weight,
                "draining": b.draining,
                **({"unreachable": True} if b.unreachable else {}),
            }
            for b in route.backends
        ],
        "weights": dict(route.weights),
        "rules": [
            {
                "version": r.version,
                "header": r.header,
                "cookie": r.cookie,
                "exact": r.exact,
                "regex": r.regex,
            }
            for r in route.rules
        ],
        "sticky": route.sticky,
    }
    if route.tls is not None:
        data["tls"] = {"certFile": route.tls.cert_file, "keyFile": route.tls.key_file}
    return data


def route_from_json(data: Mapping[str, Any]) -> Route:
    try:
        tls = data.get("tls")
        return Route(
            service=str(data["service"]),
            port=int(data["port"]),
            protocol=str(data.get("protocol", "http")),
            backends=tuple(
                Backend(
                    id=str(b["id"]),
                    address=str(b["address"]),
                    version=str(b.get("version", "")),
                    weight=int(b.get("weight", 100)),
                    draining=bool(b.get("draining", False)),
                    unreachable=bool(b.get("unreachable", False)),
                )
                for b in data.get("backends", [])
            ),
            weights=MappingProxyType({str(k): int(v) for k, v in data.get("weights", {}).items()}),
            rules=tuple(
                VersionRule(
                    version=str(r["version"]),
                    header=r.get("header"),
                    cookie=r.get("cookie"),
                    exact=r.get("exact"),
                    regex=r.get("regex"),
                )
                for r in data.get("rules", [])
            ),
            sticky=bool(data.get("sticky", False)),
            tls=TlsFiles(str(tls["certFile"]), str(tls["keyFile"])) if tls else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"not a route: {exc!r}") from exc


def table_to_json(table: RoutingTable) -> dict[str, Any]:
    data: dict[str, Any] = {"routes": [route_to_json(route) for route in table.routes.values()]}
    if table.fence is not None:
        data["fence"] = {"after": table.fence.after, "own": sorted(table.fence.own)}
    return data


def table_from_json(data: Mapping[str, Any]) -> RoutingTable:
    routes = data.get("routes")
    if not isinstance(routes, list):
        raise WireError("not a routing table: no route list")
    parsed = [route_from_json(route) for route in routes]
    return RoutingTable(
        MappingProxyType({route.service: route for route in parsed}),
        fence=_fence_from_json(data.get("fence")),
    )


def _fence_from_json(data: Any) -> Fence | None:
    if data is None:
        return None
    if not isinstance(data, Mapping) or not isinstance(data.get("own", []), list):
        raise WireError("not a fence: expected {after, own: [ids]}")
    after = float(data["after"])
    if not after > 0:
        raise WireError(f"a fence's delay must be positive, not {after}")
    return Fence(after, frozenset(str(i) for i in data.get("own", [])))


def _counts_to_json(figures: BackendFigures | VersionFigures) -> dict[str, Any]:
    return {
        "inFlight": figures.in_flight,
        "requests": figures.requests,
        "errors5xx": figures.errors_5xx,
        "connectErrors": figures.connect_errors,
        "latency": list(figures.latency),
        "latencySumMs": figures.latency_sum_ms,
        "recentMeanMs": figures.recent_mean_ms,
    }


def _counts_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "in_flight": int(data.get("inFlight", 0)),
        "requests": int(data.get("requests", 0)),
        "errors_5xx": int(data.get("errors5xx", 0)),
        "connect_errors": int(data.get("connectErrors", 0)),
        "latency": _histogram(data.get("latency")),
        "latency_sum_ms": float(data.get("latencySumMs", 0.0)),
        "recent_mean_ms": _maybe_float(data.get("recentMeanMs")),
    }


def backend_figures_to_json(figures: BackendFigures) -> dict[str, Any]:
    return {"backendId": figures.backend_id, "version": figures.version, **_counts_to_json(figures)}


def backend_figures_from_json(data: Mapping[str, Any]) -> BackendFigures:
    try:
        return BackendFigures(
            backend_id=str(data["backendId"]),
            version=str(data.get("version", "")),
            **_counts_from_json(data),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"not backend figures: {exc!r}") from exc


def version_figures_to_json(figures: VersionFigures) -> dict[str, Any]:
    return {
        "version": figures.version,
        "backends": figures.backends,
        "epoch": figures.epoch,
        **_counts_to_json(figures),
    }


def version_figures_from_json(data: Mapping[str, Any]) -> VersionFigures:
    try:
        return VersionFigures(
            version=str(data["version"]),
            backends=int(data.get("backends", 0)),
            epoch=str(data.get("epoch", "")),
            **_counts_from_json(data),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"not version figures: {exc!r}") from exc


def stats_to_json(stats: BackendStats | None) -> dict[str, int] | None:
    if stats is None:
        return None
    return {"inFlight": stats.in_flight, "requests": stats.requests, "errors": stats.errors}


def stats_from_json(data: Mapping[str, Any] | None) -> BackendStats | None:
    if data is None:
        return None
    return BackendStats(
        int(data.get("inFlight", 0)), int(data.get("requests", 0)), int(data.get("errors", 0))
    )


def _histogram(raw: Any) -> tuple[int, ...]:
    if not raw:
        return tuple(empty_histogram())
    counts = tuple(int(n) for n in raw)
    if len(counts) != len(empty_histogram()):
        raise WireError(f"a latency histogram of {len(counts)} buckets")
    return counts


def _maybe_float(raw: Any) -> float | None:
    return None if raw is None else float(raw)
