"""Per-version traffic of every route, counted so that it only grows.

The data planes keep cumulative figures per *backend*, and a backend's counts leave their
sums when it is removed from the table (the built-in plane forgets an idle removed
backend; HAProxy reports only the servers of the current table). Prometheus counters must
never decrease, and ``gitorch status`` should not lose a version's requests when one of
its replicas is replaced, so :class:`TrafficMeter` keeps its own totals: at each
:meth:`TrafficMeter.read` it takes every backend's figures, adds what grew since the last
read (per backend, clamped at zero) to the totals of the backend's (route, version), and
remembers the figures for next time. What a removed backend served between the last read
and its removal is the only thing lost; the daemon reads at each scrape, each status
request and each traffic snapshot (every few seconds), which keeps that window short.

A route is a service's endpoint, or its blue-green preview listener (``NAME.preview``).
A version is the short template digest the data plane uses; its Git ``revision`` comes
from the state store's rollout record (the first one known is kept, so a series never
changes labels mid-life).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gitorch.errors import GitorchError
from gitorch.state import StateStore, TrafficSnapshot, VersionTraffic
from gitorch.traffic.figures import BackendFigures, empty_histogram, quantile
from gitorch.traffic.table import Route, RoutingTable

log = logging.getLogger("gitorch.api.traffic")

#: A version that has had no backend for this long leaves /metrics (its series goes stale).
RETIRE_AFTER = 3600.0

FiguresReader = Callable[[str], list[BackendFigures]]
TableReader = Callable[[], RoutingTable | None]
RevisionReader = Callable[[str], Mapping[str, str]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class VersionReading:
    """One version of one route at one read: totals since the meter began, and what is
    current (backends, open connections, weight)."""

    route: str
    version: str
    revision: str  # "" when unknown
    weight: int  # percent of new traffic the table gives it now
    backends: int  # backends the data plane reports for it now
    in_flight: int
    requests: int
    errors_5xx: int
    connect_errors: int
    latency: tuple[int, ...]  # bucket counts (LATENCY_BOUNDS_MS, then the overflow)
    latency_sum_ms: float

    other_responses: int = 0  # answered requests that were not 5xx

    def to_record(self) -> VersionTraffic:
        """The stored/status form (percentiles computed here)."""
        samples = sum(self.latency)
        return VersionTraffic(
            version=self.version,
            revision=self.revision or None,
            weight=self.weight,
            backends=self.backends,
            requests=self.requests,
            errors_5xx=self.errors_5xx,
            open_connections=self.in_flight,
            p50_ms=quantile(self.latency, 0.50),
            p90_ms=quantile(self.latency, 0.90),
            p99_ms=quantile(self.latency, 0.99),
            mean_ms=self.latency_sum_ms / samples if samples else None,
        )


@dataclass(frozen=True)
class TrafficReading:
    """Every route's versions at one read (``taken_at``), counting since ``since``."""

    taken_at: float
    since: float
    data_plane: str
    routes: Mapping[str, tuple[VersionReading, ...]]

    def snapshots(self) -> list[TrafficSnapshot]:
        """One snapshot per route, with the versions that serve or are weighted now
        (versions gone from the route stay in /metrics, not in status)."""
        return [
            TrafficSnapshot(
                service=route,
                taken_at=self.taken_at,
                since=self.since,
                data_plane=self.data_plane,
                versions=tuple(v.to_record() for v in versions if v.backends > 0 or v.weight > 0),
            )
            for route, versions in sorted(self.routes.items())
        ]


@dataclass
class _Totals:
    requests: int = 0
    errors_5xx: int = 0
    other: int = 0  # kept apart so it only grows too (requests - 5xx of each delta)
    connect_errors: int = 0
    latency: list[int] = field(default_factory=empty_histogram)
    latency_sum_ms: float = 0.0
    revision: str = ""
    last_seen: float = 0.0  # when a backend of it was last reported

    def add(self, now: BackendFigures, before: BackendFigures | None) -> None:
        """Add what ``now`` grew since ``before`` (everything when first seen)."""

        def grew(a: float, b: float) -> float:
            return max(0.0, a - b)

        requests = int(grew(now.requests, before.requests if before else 0))
        errors = int(grew(now.errors_5xx, before.errors_5xx if before else 0))
        self.requests += requests
        self.errors_5xx += errors
        self.other += max(0, requests - errors)
        self.connect_errors += int(grew(now.connect_errors, before.connect_errors if before else 0))
        earlier = before.latency if before else ()
        for index, count in enumerate(now.latency[: len(self.latency)]):
            old = earlier[index] if index < len(earlier) else 0
            self.latency[index] += int(grew(count, old))
        self.latency_sum_ms += grew(now.latency_sum_ms, before.latency_sum_ms if before else 0)


def weights_in_force(route: Route) -> dict[str, int]:
    """Percent of new traffic per version: the route's weights when it has some, else
    each version's share of the active backends' weights (a rolling update)."""
    if route.weights:
        return {version: int(weight) for version, weight in route.weights.items()}
    by_version: dict[str, int] = {}
    for backend in route.active():
        by_version[backend.version] = by_version.get(backend.version, 0) + backend.weight
    total = sum(by_version.values())
    if total == 0:
        return {}
    return {version: round(100 * weight / total) for version, weight in by_version.items()}


def service_of(route: str) -> str:
    """The service a route belongs to (``web.preview`` -> ``web``)."""
    return route.split(".", 1)[0]


def store_revisions(store: StateStore) -> RevisionReader:
    """version (short template digest) -> Git revision, from the service's rollout record
    (the version rolled out and the one before it)."""

    def read(service: str) -> Mapping[str, str]:
        record = store.get_rollout(service)
        if record is None:
            return {}
        found = {record.spec_digest[:12]: record.revision}
        if record.previous_digest and record.previous_revision:
            found.setdefault(record.previous_digest[:12], record.previous_revision)
        return found

    return read


class TrafficMeter:
    """Reads a data plane's per-backend figures for every route of the table in force and
    keeps per-(route, version) totals that only grow. Thread-safe: the API threads (scrapes,
    status) and the reconcile loop (snapshots) read concurrently."""

    def __init__(
        self,
        figures: FiguresReader,
        table: TableReader,
        revisions: RevisionReader,
        *,
        data_plane: str,
        clock: Clock = time.time,
    ) -> None:
        self._figures = figures
        self._table = table
        self._revisions = revisions
        self.data_plane = data_plane
        self._clock = clock
        self.since = clock()
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[BackendFigures, float]] = {}
        self._totals: dict[tuple[str, str], _Totals] = {}

    def read(self) -> TrafficReading:
        """Take every route's figures now, fold them into the totals, return them."""
        with self._lock:
            now = self._clock()
            table = self._table()
            routes = dict(table.routes) if table is not None else {}
            readings = {name: self._read_route(name, route, now) for name, route in routes.items()}
            self._forget(set(routes), now)
            return TrafficReading(now, self.since, self.data_plane, readings)

    def _read_route(self, name: str, route: Route, now: float) -> tuple[VersionReading, ...]:
        try:
            backends = self._figures(name)
        except GitorchError as exc:
            # The data plane is restarting (HAProxy reload, a revived worker): keep the
            # totals, report no current backends this time.
            log.warning("traffic figures of %s unreadable: %s", name, exc.message)
            backends = []
        current: dict[str, tuple[int, int]] = {}  # version -> (backends, in flight)
        for backend in backends:
            key = (name, backend.backend_id)
            before = self._last.get(key)
            totals = self._totals.setdefault((name, backend.version), _Totals())
            totals.add(backend, before[0] if before else None)
            totals.last_seen = now
            self._last[key] = (backend, now)
            count, in_flight = current.get(backend.version, (0, 0))
            current[backend.version] = (count + 1, in_flight + backend.in_flight)
        weights = weights_in_force(route)
        for version in weights:
            self._totals.setdefault((name, version), _Totals(last_seen=now))
        self._pin_revisions(name)
        result = []
        for (route_name, version), totals in sorted(self._totals.items()):
            if route_name != name:
                continue
            count, in_flight = current.get(version, (0, 0))
            result.append(
                VersionReading(
                    route=name,
                    version=version,
                    revision=totals.revision,
                    weight=weights.get(version, 0),
                    backends=count,
                    in_flight=in_flight,
                    requests=totals.requests,
                    errors_5xx=totals.errors_5xx,
                    connect_errors=totals.connect_errors,
                    latency=tuple(totals.latency),
                    latency_sum_ms=totals.latency_sum_ms,
                    other_responses=totals.other,
                )
            )
        return tuple(result)

    def _pin_revisions(self, route: str) -> None:
        missing = [k for k, t in self._totals.items() if k[0] == route and not t.revision]
        if not missing:
            return
        try:
            known = self._revisions(service_of(route))
        except GitorchError as exc:
            log.warning("revisions of %s unreadable: %s", route, exc.message)
            return
        for key in missing:
            self._totals[key].revision = known.get(key[1], "")

    def _forget(self, routes: set[str], now: float) -> None:
        """Drop routes that left the table, versions idle for RETIRE_AFTER, and the last
        figures of backends not reported for as long (memory stays bounded)."""
        for key in [
            k
            for k, t in self._totals.items()
            if k[0] not in routes or now - t.last_seen > RETIRE_AFTER
        ]:
            del self._totals[key]
        # A backend still known is kept a long time: if it were reported again after
        # being forgotten, its whole count would be added a second time.
        for key in [
            k
            for k, (_, seen) in self._last.items()
            if k[0] not in routes or now - seen > RETIRE_AFTER
        ]:
            del self._last[key]
