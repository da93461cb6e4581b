"""Per-version traffic of every route, counted so that it only grows.

A data plane counts per *backend*, and a backend leaves the table when its replica is
replaced: its counts would leave every per-version sum with it, yet Prometheus counters
must never decrease and a canary's analysis must not lose the requests of a replica that
was replaced mid-window. :class:`VersionLedger` keeps per-(route, version) totals: each
time it is shown a backend's cumulative figures (:meth:`VersionLedger.observe`) it adds
what grew since it last saw that backend (clamped at zero) to the totals of the backend's
version. A data plane shows it a backend's last figures when it forgets the backend, so
nothing is lost; it lives in the data plane's process (``gitorch proxy``), so the totals
outlive the daemon.

Totals carry the ledger's ``epoch`` (see :class:`~gitorch.traffic.figures.VersionFigures`)
and when counting began (``since``); both go over to a successor proxy with the totals.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gitorch.traffic.figures import BackendFigures, VersionFigures, empty_histogram
from gitorch.traffic.table import Route
from gitorch.traffic.wire import backend_figures_from_json, backend_figures_to_json

#: A version that has had no backend for this long is forgotten (its series goes stale).
RETIRE_AFTER = 3600.0

Clock = Callable[[], float]


@dataclass
class _Totals:
    requests: int = 0
    errors_5xx: int = 0
    connect_errors: int = 0
    latency: list[int] = field(default_factory=empty_histogram)
    latency_sum_ms: float = 0.0
    last_seen: float = 0.0  # when a backend of it was last shown

    def add(self, now: BackendFigures, before: BackendFigures | None) -> None:
        """Add what ``now`` grew since ``before`` (everything when first seen)."""
        self.requests += max(0, now.requests - (before.requests if before else 0))
        self.errors_5xx += max(0, now.errors_5xx - (before.errors_5xx if before else 0))
        self.connect_errors += max(0, now.connect_errors - (before.connect_errors if before else 0))
        earlier = before.latency if before else ()
        for index, count in enumerate(now.latency[: len(self.latency)]):
            old = earlier[index] if index < len(earlier) else 0
            self.latency[index] += max(0, count - old)
        self.latency_sum_ms += max(
            0.0, now.latency_sum_ms - (before.latency_sum_ms if before else 0.0)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors5xx": self.errors_5xx,
            "connectErrors": self.connect_errors,
            "latency": list(self.latency),
            "latencySumMs": self.latency_sum_ms,
            "lastSeen": self.last_seen,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Totals:
        latency = [int(n) for n in data.get("latency", [])]
        if len(latency) != len(empty_histogram()):
            latency = empty_histogram()
        return cls(
            requests=int(data.get("requests", 0)),
            errors_5xx=int(data.get("errors5xx", 0)),
            connect_errors=int(data.get("connectErrors", 0)),
            latency=latency,
            latency_sum_ms=float(data.get("latencySumMs", 0.0)),
            last_seen=float(data.get("lastSeen", 0.0)),
        )


class VersionLedger:
    """Per-(route, version) totals that only grow (see the module docstring).

    Not thread-safe: its data plane calls it under its own lock or on its own thread.
    """

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self.epoch = secrets.token_hex(6)
        self.since = clock()
        self._totals: dict[tuple[str, str], _Totals] = {}
        self._last: dict[tuple[str, str], BackendFigures] = {}  # (route, backend id)

    def observe(self, route: str, figures: Iterable[BackendFigures]) -> None:
        """Fold what each backend counted since it was last shown."""
        now = self._clock()
        for backend in figures:
            key = (route, backend.backend_id)
            totals = self._totals.setdefault((route, backend.version), _Totals())
            totals.add(backend, self._last.get(key))
            totals.last_seen = now
            self._last[key] = backend

    def depart(self, route: str, figures: Iterable[BackendFigures]) -> None:
        """Backends leaving the data plane: their last figures are folded, then they are
        forgotten (a backend id never comes back with its counters at zero unseen)."""
        gone = list(figures)
        self.observe(route, gone)
        for backend in gone:
            self._last.pop((route, backend.backend_id), None)

    def forget_backends(self, which: Callable[[str], bool]) -> None:
        """Forget the last figures of the backends whose id ``which`` accepts (they
        are gone: what they counted stays in the totals)."""
        for key in [k for k in self._last if which(k[1])]:
            del self._last[key]

    def versions(
        self, route: str, current: Iterable[BackendFigures], weights: Iterable[str] = ()
    ) -> dict[str, VersionFigures]:
        """Totals of every version of ``route`` after folding ``current`` (the backends
        serving now, whose count and in-flight figures are reported as they are now).
        Versions in ``weights`` are listed even before they served anything."""
        present = list(current)
        self.observe(route, present)
        now = self._clock()
        for version in weights:
            self._totals.setdefault((route, version), _Totals(last_seen=now))
        live: dict[str, tuple[int, int]] = {}
        for backend in present:
            count, in_flight = live.get(backend.version, (0, 0))
            live[backend.version] = (count + 1, in_flight + backend.in_flight)
        result: dict[str, VersionFigures] = {}
        for (name, version), totals in sorted(self._totals.items()):
            if name != route:
                continue
            count, in_flight = live.get(version, (0, 0))
            result[version] = VersionFigures(
                version=version,
                backends=count,
                in_flight=in_flight,
                requests=totals.requests,
                errors_5xx=totals.errors_5xx,
                connect_errors=totals.connect_errors,
                latency=tuple(totals.latency),
                latency_sum_ms=totals.latency_sum_ms,
                epoch=self.epoch,
            )
        return result

    def keep_routes(self, routes: Iterable[str]) -> None:
        """Forget routes that left the table, and versions idle for :data:`RETIRE_AFTER`."""
        wanted = set(routes)
        now = self._clock()
        for key in [
            k
            for k, t in self._totals.items()
            if k[0] not in wanted or now - t.last_seen > RETIRE_AFTER
        ]:
            del self._totals[key]
        for key in [k for k in self._last if k[0] not in wanted]:
            del self._last[key]

    # ------------------------------------------------------------------ hand over

    def to_json(self, *, backends: bool = False) -> dict[str, Any]:
        """Totals, epoch and since; with ``backends``, also the last figures seen of each
        backend (for a successor that reads the same counters: an adopted HAProxy). A
        successor proxy counts its own backends from zero, so it takes none."""
        data: dict[str, Any] = {
            "epoch": self.epoch,
            "since": self.since,
            "totals": [
                {"route": route, "version": version, **totals.to_json()}
                for (route, version), totals in sorted(self._totals.items())
            ],
        }
        if backends:
            data["backends"] = [
                {"route": route, **backend_figures_to_json(figures)}
                for (route, _), figures in sorted(self._last.items())
            ]
        return data

    def take_over(self, data: Mapping[str, Any]) -> None:
        """Continue a predecessor's counting: its epoch, since and totals (added to
        whatever this ledger counted already)."""
        self.epoch = str(data.get("epoch") or self.epoch)
        self.since = float(data.get("since") or self.since)
        for row in data.get("totals", []):
            key = (str(row["route"]), str(row["version"]))
            carried = _Totals.from_json(row)
            mine = self._totals.get(key)
            if mine is None:
                self._totals[key] = carried
                continue
            mine.requests += carried.requests
            mine.errors_5xx += carried.errors_5xx
            mine.connect_errors += carried.connect_errors
            mine.latency = [a + b for a, b in zip(mine.latency, carried.latency, strict=True)]
            mine.latency_sum_ms += carried.latency_sum_ms
            mine.last_seen = max(mine.last_seen, carried.last_seen)
        for row in data.get("backends", []):
            figures = backend_figures_from_json(row)
            self._last[(str(row["route"]), figures.backend_id)] = figures


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
