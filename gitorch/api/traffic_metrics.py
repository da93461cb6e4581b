"""The load balancer's per-version figures as Prometheus families (a custom collector).

Collected at scrape time from one :class:`~gitorch.api.traffic.TrafficReading`, so every
family shows the same instant. Labels: ``service`` (the route: a service, or
``NAME.preview`` for a blue-green preview listener), ``version`` (the short template
digest the data plane uses) and ``revision`` (the Git commit of that version, empty when
unknown)::

    gitorch_lb_requests_total{service="web",version="3f2a9c1e5b7d",revision="..."} 1200
    gitorch_lb_responses_total{...,code_class="5xx"} 3
    gitorch_lb_request_duration_seconds_bucket{...,le="0.005"} 1100
    gitorch_lb_open_connections{...} 4
    gitorch_lb_weight_percent{...} 20

The totals come from the data plane (they only grow, and outlive the daemon when the
data plane is ``gitorch proxy`` or HAProxy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import accumulate

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from gitorch.api.traffic import TrafficReading, VersionReading
from gitorch.traffic.figures import LATENCY_BOUNDS_MS

#: ``le`` of each latency bucket, in seconds (the last bucket is +Inf).
BUCKET_BOUNDS_SECONDS: tuple[float, ...] = tuple(ms / 1000 for ms in LATENCY_BOUNDS_MS)

LABELS = ["service", "version", "revision"]


def _labels(v: VersionReading) -> list[str]:
    return [v.route, v.version, v.revision]


class TrafficCollector:
    """Every ``gitorch_lb_*`` family of the reading ``read()`` returns at each scrape
    (HELP and TYPE even without series)."""

    def __init__(self, read: Callable[[], TrafficReading]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        reading = self._read()
        versions = [v for route in sorted(reading.routes) for v in reading.routes[route]]
        requests = CounterMetricFamily(
            "gitorch_lb_requests_total",
            "Requests (http) or connections (tcp) the load balancer finished, per version.",
            labels=LABELS,
        )
        responses = CounterMetricFamily(
            "gitorch_lb_responses_total",
            "Answered requests per version by status class: 5xx (the load balancer's own "
            "502/504 included) or other.",
            labels=[*LABELS, "code_class"],
        )
        connect_errors = CounterMetricFamily(
            "gitorch_lb_connect_errors_total",
            "Failed connection attempts to a version's backends (retried elsewhere when possible).",
            labels=LABELS,
        )
        duration = HistogramMetricFamily(
            "gitorch_lb_request_duration_seconds",
            "Time from picking a backend to receiving its response head, per version (http).",
            labels=LABELS,
        )
        open_connections = GaugeMetricFamily(
            "gitorch_lb_open_connections",
            "Requests being served (http) or connections open (tcp) on a version now.",
            labels=LABELS,
        )
        backends = GaugeMetricFamily(
            "gitorch_lb_backends", "Backends of a version in the data plane now.", labels=LABELS
        )
        weight = GaugeMetricFamily(
            "gitorch_lb_weight_percent",
            "Percent of new traffic the routing table gives a version now.",
            labels=LABELS,
        )
        for v in versions:
            labels = _labels(v)
            requests.add_metric(labels, v.requests)
            responses.add_metric([*labels, "5xx"], v.errors_5xx)
            responses.add_metric([*labels, "other"], v.other_responses)
            connect_errors.add_metric(labels, v.connect_errors)
            bounds = [repr(b) for b in BUCKET_BOUNDS_SECONDS] + ["+Inf"]
            duration.add_metric(
                labels,
                list(zip(bounds, accumulate(v.latency), strict=True)),
                sum_value=v.latency_sum_ms / 1000,
            )
            open_connections.add_metric(labels, v.in_flight)
            backends.add_metric(labels, v.backends)
            weight.add_metric(labels, v.weight)
        yield from (requests, responses, connect_errors, duration, open_connections, backends)
        yield weight
