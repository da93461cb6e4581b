"""The figures the horizontal autoscaler decides from, read (never changed) each sync.

* ``cpu`` and ``memory``: every ready replica's usage from its runtime (Docker's stats;
  the process driver's cgroup or ``/proc`` ticks and RSS), as a percent of the replica's
  request, averaged over the replicas that answered (all asked at once: Docker's stats
  call waits for two samples, about a second).
* ``rps`` and ``latency``: the data plane's per-version figures of the service (every
  version added), between this sync and the previous one: requests per second divided by
  the ready replicas, and the p99 of the window's latency histogram. The first sync after
  a start, or after the data plane began counting again, has no window: not measured.
* ``prometheus``: an instant query (``{{service}}`` and ``{{version}}`` filled in) whose
  one number is compared with ``targetValue``.

A figure that cannot be read is a reading with no value and a reason: the decision then
never scales down on the strength of the other metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gitorch.analysis.prometheus import PrometheusQueryFailed, query_value, render_query
from gitorch.decide.autoscale import MetricReading
from gitorch.decide.service import version_key
from gitorch.errors import GitorchError
from gitorch.live.model import LiveReplica
from gitorch.manifests.model import AutoscaleMetric, Service
from gitorch.runtime.base import ResourceUsage, Runtime
from gitorch.traffic.figures import VersionFigures, combine, quantile

#: Version figures of one service, by version (the data plane's ``version_figures``).
FiguresReader = Callable[[str], Mapping[str, VersionFigures]]


@dataclass(frozen=True)
class _Window:
    at: float
    figures: VersionFigures


@dataclass(frozen=True)
class Usage:
    """One replica's usage as read this sync."""

    replica: str
    cpu_millis: float
    memory_bytes: int


class ScaleMetrics:
    """Reads the metrics of autoscaled services; remembers the previous traffic figures."""

    def __init__(
        self,
        runtimes: Mapping[str, Runtime],
        figures: FiguresReader,
        *,
        clock: Callable[[], float] = time.monotonic,
        query_timeout: float = 5.0,
    ) -> None:
        self.runtimes = runtimes
        self._figures = figures
        self._clock = clock
        self._query_timeout = query_timeout
        self._previous: dict[str, _Window] = {}

    def usage(self, replicas: Sequence[LiveReplica]) -> list[Usage]:
        """Every replica's usage, asked in parallel; replicas that did not answer are left out."""

        def one(replica: LiveReplica) -> Usage | None:
            runtime = self.runtimes.get(replica.node)
            if runtime is None:
                return None
            try:
                used: ResourceUsage = runtime.usage(replica.id)
            except GitorchError:
                return None
            return Usage(replica.replica, used.cpu_percent * 10.0, used.memory_bytes)

        if not replicas:
            return []
        with ThreadPoolExecutor(max_workers=min(8, len(replicas))) as pool:
            return [u for u in pool.map(one, replicas) if u is not None]

    def read(
        self, service: Service, ready: Sequence[LiveReplica], usage: Sequence[Usage] | None = None
    ) -> tuple[MetricReading, ...]:
        """One reading per metric of ``service.autoscale`` (``ready``: its ready replicas;
        ``usage``: their usage when already read)."""
        assert service.autoscale is not None
        metrics = service.autoscale.metrics
        needs_usage = any(m.type in ("cpu", "memory") for m in metrics)
        if usage is None and needs_usage:
            usage = self.usage(ready)
        window = (
            self._window(service.name)
            if any(m.type in ("rps", "latency") for m in metrics)
            else None
        )
        readings: list[MetricReading] = []
        for metric in metrics:
            if metric.type in ("cpu", "memory"):
                readings.append(_utilization(service, metric, usage or [], len(ready)))
            elif metric.type in ("rps", "latency"):
                readings.append(_traffic(metric, window, len(ready)))
            else:
                readings.append(self._prometheus(service, metric, len(ready)))
        return tuple(readings)

    def forget(self, service: str) -> None:
        self._previous.pop(service, None)

    # -- traffic -----------------------------------------------------------------------

    def _window(self, service: str) -> tuple[VersionFigures, float] | str:
        """The service's figures since the previous sync and the seconds between, or why
        there is no window."""
        try:
            now_figures = combine(service, self._figures(service).values())
        except GitorchError as exc:
            return f"data plane: {exc.message}"
        now = self._clock()
        previous = self._previous.get(service)
        self._previous[service] = _Window(now, now_figures)
        if previous is None:
            return "first sample: the rate is known at the next sync"
        window = now_figures.since(previous.figures)
        if window.restarted:
            return "the data plane began counting again: the rate is known at the next sync"
        return window, max(now - previous.at, 1e-3)

    def _prometheus(self, service: Service, metric: AutoscaleMetric, ready: int) -> MetricReading:
        target = metric.target
        if not metric.address:
            return MetricReading("prometheus", target, None, 0, "no address given")
        version = version_key(service.template_digest)
        query = render_query(metric.query or "", version=version, service=service.name)
        try:
            value = query_value(metric.address, query, timeout=self._query_timeout)
        except PrometheusQueryFailed as exc:
            return MetricReading("prometheus", target, None, 0, exc.message)
        if value != value:  # NaN: nothing to compare
            return MetricReading("prometheus", target, None, 0, "the query returned NaN")
        return MetricReading("prometheus", target, value, ready)


def _utilization(
    service: Service, metric: AutoscaleMetric, usage: Sequence[Usage], ready: int
) -> MetricReading:
    """Average use of the request over the replicas that answered, in percent."""
    target = metric.target
    requests = service.resources.requests
    request = requests.cpu_millis if metric.type == "cpu" else requests.memory_bytes
    if not request:
        return MetricReading(metric.type, target, None, 0, f"no requests.{metric.type}")
    if ready == 0:
        return MetricReading(metric.type, target, None, 0, "no ready replica")
    if not usage:
        return MetricReading(metric.type, target, None, 0, "no replica reported its usage")
    used = [u.cpu_millis if metric.type == "cpu" else float(u.memory_bytes) for u in usage]
    value = 100.0 * sum(used) / len(used) / request
    return MetricReading(metric.type, target, round(value, 2), len(used))


def _traffic(
    metric: AutoscaleMetric, window: tuple[VersionFigures, float] | str | None, ready: int
) -> MetricReading:
    target = metric.target
    if window is None or isinstance(window, str):
        return MetricReading(metric.type, target, None, 0, window or "no window")
    figures, seconds = window
    if metric.type == "rps":
        if ready == 0:
            return MetricReading("rps", target, None, 0, "no ready replica")
        return MetricReading("rps", target, round(figures.requests / seconds / ready, 3), ready)
    p99 = quantile(figures.latency, 0.99) if figures.latency else None
    if p99 is None:
        why = (
            "the data plane keeps no latency histogram (HAProxy)"
            if figures.requests
            else "no request in the window"
        )
        return MetricReading("latency", target, None, 0, why)
    return MetricReading("latency", target, round(p99, 2), max(ready, 1))
