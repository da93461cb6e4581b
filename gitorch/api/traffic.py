"""Per-version traffic of every route, for ``/metrics`` and ``gitorch status``.

The data plane keeps per-version totals that only grow (a replaced backend's counts
stay: :class:`~gitorch.traffic.ledger.VersionLedger`), in its own process when it is
``gitorch proxy`` or HAProxy, so they outlive the daemon. :class:`TrafficMeter` reads them
for every route of the table in force and adds what the daemon knows: the weight the
table gives each version, and the Git revision of each version.

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
from concurrent.futures import Future
from dataclasses import dataclass

from gitorch.errors import GitorchError
from gitorch.state import StateStore, TrafficSnapshot, VersionTraffic
from gitorch.traffic.figures import VersionFigures, empty_histogram, quantile
from gitorch.traffic.ledger import weights_in_force
from gitorch.traffic.table import Route, RoutingTable

log = logging.getLogger("gitorch.api.traffic")

VersionsReader = Callable[[str], Mapping[str, VersionFigures]]
SinceReader = Callable[[], float | None]
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
    """Reads a data plane's per-version totals for every route of the table in force.
    Thread-safe: the API threads (scrapes, status) and the reconcile loop (snapshots) read
    concurrently."""

    def __init__(
        self,
        versions: VersionsReader,
        table: TableReader,
        revisions: RevisionReader,
        *,
        data_plane: str,
        since: SinceReader | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._versions = versions
        self._table = table
        self._revisions = revisions
        self.data_plane = data_plane
        self._since = since
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._pinned: dict[tuple[str, str], str] = {}  # (route, version) -> revision
        self._last: TrafficReading | None = None
        self._flight: Future[TrafficReading] | None = None  # read(wait=...)'s, under way
        self._flight_lock = threading.Lock()

    def read(self, *, wait: float | None = None) -> TrafficReading:
        """Every route's figures now. With ``wait``, a reading that takes longer than
        ``wait`` seconds gives way to the last one (its ``taken_at`` says when) while it
        goes on behind (one at a time: a second reader joins it). A host that stopped
        answering holds a read up to its call's timeout (5 s), and a status or a scrape
        should not wait that out."""
        if wait is None:
            return self._read_now()
        with self._flight_lock:
            flight = self._flight
            if flight is None or flight.done():
                flight = self._flight = Future()
                threading.Thread(
                    target=self._fly, args=(flight,), name="gitorch-traffic-read", daemon=True
                ).start()
        try:
            return flight.result(timeout=wait)
        except TimeoutError:
            last = self._last
            return last if last is not None else flight.result()  # none yet: wait for it

    def _fly(self, flight: Future[TrafficReading]) -> None:
        try:
            flight.set_result(self._read_now())
        except BaseException as exc:  # handed to the readers that wait for it
            flight.set_exception(exc)

    def _read_now(self) -> TrafficReading:
        with self._lock:
            now = self._clock()
            table = self._table()
            routes = dict(table.routes) if table is not None else {}
            readings = {name: self._read_route(name, route) for name, route in routes.items()}
            self._pinned = {k: v for k, v in self._pinned.items() if k[0] in routes}
            since = self._since() if self._since is not None else None
            self._last = TrafficReading(now, since or self._started, self.data_plane, readings)
            return self._last

    def _read_route(self, name: str, route: Route) -> tuple[VersionReading, ...]:
        try:
            versions = dict(self._versions(name))
        except GitorchError as exc:
            # The data plane is restarting (HAProxy reload, a proxy being replaced): report
            # no figures this time rather than fail the scrape.
            log.warning("traffic figures of %s unreadable: %s", name, exc.message)
            versions = {}
        weights = weights_in_force(route)
        self._pin_revisions(name, [*versions, *weights])
        result = []
        for version in sorted({*versions, *weights}):
            figures = versions.get(version)
            latency = figures.latency if figures is not None else tuple(empty_histogram())
            requests = figures.requests if figures is not None else 0
            errors = figures.errors_5xx if figures is not None else 0
            result.append(
                VersionReading(
                    route=name,
                    version=version,
                    revision=self._pinned.get((name, version), ""),
                    weight=weights.get(version, 0),
                    backends=figures.backends if figures is not None else 0,
                    in_flight=figures.in_flight if figures is not None else 0,
                    requests=requests,
                    errors_5xx=errors,
                    connect_errors=figures.connect_errors if figures is not None else 0,
                    latency=latency,
                    latency_sum_ms=figures.latency_sum_ms if figures is not None else 0.0,
                    other_responses=max(0, requests - errors),
                )
            )
        return tuple(result)

    def _pin_revisions(self, route: str, versions: list[str]) -> None:
        missing = [v for v in versions if not self._pinned.get((route, v))]
        if not missing:
            return
        try:
            known = self._revisions(service_of(route))
        except GitorchError as exc:
            log.warning("revisions of %s unreadable: %s", route, exc.message)
            return
        for version in missing:
            if known.get(version):
                self._pinned[(route, version)] = known[version]
