"""Per-backend and per-version traffic figures kept by a data plane (pure data).

Rollout analysis (success rate, p99 latency) and rps autoscaling read these. Everything is
a cumulative counter, like Prometheus counters: an analysis takes two snapshots and looks
at :meth:`VersionFigures.since` between them. Latency is a fixed-bucket histogram so that
recording one sample costs one ``bisect`` and one increment, whatever the traffic.

Data planes that keep no histogram (HAProxy reports averages only) leave ``latency``
empty, so ``p50``/``p90``/``p99`` are None, and give ``recent_mean_ms`` instead: an
analysis must treat a None percentile as "not measured" (inconclusive), not as a pass.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

#: Upper bounds (milliseconds) of the latency buckets; one more bucket counts the rest.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000,
)  # fmt: skip


def bucket_of(ms: float) -> int:
    """Index of the bucket a latency of ``ms`` milliseconds falls in."""
    return bisect_left(LATENCY_BOUNDS_MS, ms)


def empty_histogram() -> list[int]:
    """A fresh, mutable bucket count list (one slot per bound plus the overflow)."""
    return [0] * (len(LATENCY_BOUNDS_MS) + 1)


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) in milliseconds, interpolated inside its bucket.

    None when there is no sample. Samples in the overflow bucket are reported as the last
    bound: the histogram cannot tell more, and an analysis threshold is far below it.
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(LATENCY_BOUNDS_MS):
                return float(LATENCY_BOUNDS_MS[-1])
            low = 0.0 if index == 0 else float(LATENCY_BOUNDS_MS[index - 1])
            high = float(LATENCY_BOUNDS_MS[index])
            return low + (high - low) * ((rank - seen) / count)
        seen += count
    return float(LATENCY_BOUNDS_MS[-1])


class _Quantiles:
    """Latency quantiles (ms) of a bucketed histogram in ``latency`` (None: no samples)."""

    latency: tuple[int, ...]

    @property
    def p50(self) -> float | None:
        return quantile(self.latency, 0.50)

    @property
    def p90(self) -> float | None:
        return quantile(self.latency, 0.90)

    @property
    def p99(self) -> float | None:
        return quantile(self.latency, 0.99)


@dataclass(frozen=True)
class BackendFigures(_Quantiles):
    """Cumulative figures of one backend, as seen by the data plane.

    ``requests`` counts answered requests (http) or finished connections (tcp);
    ``errors_5xx`` the 5xx answers among them (including the data plane's own 502/504 when
    the backend failed mid-request); ``connect_errors`` failed connection attempts (which
    the data plane retried elsewhere when it could). ``latency`` holds the bucket counts of
    the time from picking the backend to receiving its response head (http only), and
    ``latency_sum_ms`` their sum (for the mean). ``recent_mean_ms`` is a data plane's own
    moving average when it keeps no histogram (HAProxy: over its last 1024 requests).
    """

    backend_id: str
    version: str
    in_flight: int
    requests: int
    errors_5xx: int
    connect_errors: int
    latency: tuple[int, ...]
    latency_sum_ms: float = 0.0
    recent_mean_ms: float | None = None


@dataclass(frozen=True)
class VersionFigures(_Quantiles):
    """The figures of every backend running one version, added up.

    ``in_flight`` is what is open on the version right now: requests being served (http)
    or connections (tcp); :attr:`open_connections` names the same figure.

    ``epoch`` names the counting that produced the figures (one per data-plane process
    that counts, carried over when a proxy hands over to its successor): two snapshots of
    different epochs cannot be subtracted. ``restarted`` marks a window (:meth:`since`)
    in which the counting started again: it holds only what was counted after the
    restart, and what came between the earlier snapshot and the restart is not in it
    (never guessed).
    """

    version: str
    backends: int
    in_flight: int
    requests: int
    errors_5xx: int
    connect_errors: int
    latency: tuple[int, ...]
    latency_sum_ms: float = 0.0
    recent_mean_ms: float | None = None
    epoch: str = ""
    restarted: bool = False

    @property
    def open_connections(self) -> int:
        return self.in_flight

    @property
    def mean_ms(self) -> float | None:
        """Mean latency: exact from the histogram's samples, else the data plane's own
        recent average, else None."""
        samples = sum(self.latency)
        if samples:
            return self.latency_sum_ms / samples
        return self.recent_mean_ms

    @property
    def success_rate(self) -> float | None:
        """Share of non-5xx answers (None without any request)."""
        if self.requests == 0:
            return None
        return 1.0 - self.errors_5xx / self.requests

    def since(self, earlier: VersionFigures) -> VersionFigures:
        """What happened between ``earlier`` and this snapshot (counters subtracted).

        ``in_flight`` and ``backends`` are current values, not differences. A backend that
        left in between can make a difference negative; it is clamped at zero. When the
        two snapshots come from different counting epochs, the window is what this one
        counted since it began, marked ``restarted``.
        """
        if self.epoch and earlier.epoch and self.epoch != earlier.epoch:
            return replace(self, restarted=True)
        return VersionFigures(
            version=self.version,
            backends=self.backends,
            in_flight=self.in_flight,
            requests=max(0, self.requests - earlier.requests),
            errors_5xx=max(0, self.errors_5xx - earlier.errors_5xx),
            connect_errors=max(0, self.connect_errors - earlier.connect_errors),
            latency=tuple(
                max(0, a - b) for a, b in zip(self.latency, earlier.latency, strict=True)
            ),
            latency_sum_ms=max(0.0, self.latency_sum_ms - earlier.latency_sum_ms),
            # A moving average cannot be subtracted: the later one is the best there is.
            recent_mean_ms=self.recent_mean_ms,
            epoch=self.epoch,
        )


def by_version(backends: Iterable[BackendFigures]) -> dict[str, VersionFigures]:
    """Add up backend figures per version."""
    groups: dict[str, list[BackendFigures]] = {}
    for figures in backends:
        groups.setdefault(figures.version, []).append(figures)
    result: dict[str, VersionFigures] = {}
    for version, members in groups.items():
        latency = empty_histogram()
        for member in members:
            for index, count in enumerate(member.latency):
                latency[index] += count
        result[version] = VersionFigures(
            version=version,
            backends=len(members),
            in_flight=sum(m.in_flight for m in members),
            requests=sum(m.requests for m in members),
            errors_5xx=sum(m.errors_5xx for m in members),
            connect_errors=sum(m.connect_errors for m in members),
            latency=tuple(latency),
            latency_sum_ms=sum(m.latency_sum_ms for m in members),
            recent_mean_ms=_weighted_mean(members),
        )
    return result


def _weighted_mean(members: Sequence[BackendFigures]) -> float | None:
    """Backends' recent means combined, weighted by their request counts."""
    known = [m for m in members if m.recent_mean_ms is not None]
    if not known:
        return None
    weight = sum(m.requests for m in known)
    if weight == 0:
        return sum(m.recent_mean_ms or 0.0 for m in known) / len(known)
    return sum((m.recent_mean_ms or 0.0) * m.requests for m in known) / weight


def add_histograms(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """Two bucket count lists added (an empty one counts as zeros)."""
    if not a:
        return tuple(b)
    if not b:
        return tuple(a)
    return tuple(x + y for x, y in zip(a, b, strict=True))


Counted = TypeVar("Counted", BackendFigures, VersionFigures)


def added(a: Counted, b: Counted) -> Counted:
    """``a`` with ``b``'s counts, histogram and in-flight figure added (the same backend
    or version counted in two places)."""
    return replace(
        a,
        in_flight=a.in_flight + b.in_flight,
        requests=a.requests + b.requests,
        errors_5xx=a.errors_5xx + b.errors_5xx,
        connect_errors=a.connect_errors + b.connect_errors,
        latency=add_histograms(a.latency, b.latency),
        latency_sum_ms=a.latency_sum_ms + b.latency_sum_ms,
    )


def combine(version: str, parts: Iterable[VersionFigures]) -> VersionFigures:
    """The figures of one version counted in several places (worker processes) added up."""
    total = VersionFigures(version, 0, 0, 0, 0, 0, tuple(empty_histogram()))
    for part in parts:
        total = replace(
            added(total, part),
            backends=max(total.backends, part.backends),
            epoch=part.epoch or total.epoch,
        )
    return total
