"""The load balancer's per-version figures in the Prometheus text format.

Rendered at scrape time from one :class:`~gitorch.api.traffic.TrafficReading`, so every
family shows the same instant. Labels: ``service`` (the route: a service, or
``NAME.preview`` for a blue-green preview listener), ``version`` (the short template
digest the data plane uses) and ``revision`` (the Git commit of that version, empty when
unknown)::

    gitorch_lb_requests_total{service="web",version="3f2a9c1e5b7d",revision="..."} 1200
    gitorch_lb_responses_total{...,code_class="5xx"} 3
    gitorch_lb_request_duration_seconds_bucket{...,le="0.005"} 1100
    gitorch_lb_open_connections{...} 4
    gitorch_lb_weight_percent{...} 20
"""

from __future__ import annotations

from collections.abc import Iterable

from gitorch.api.metrics import escape_help, escape_label_value, format_value
from gitorch.api.traffic import TrafficReading, VersionReading
from gitorch.traffic.figures import LATENCY_BOUNDS_MS

#: ``le`` of each latency bucket, in seconds (the last bucket is +Inf).
BUCKET_BOUNDS_SECONDS: tuple[float, ...] = tuple(ms / 1000 for ms in LATENCY_BOUNDS_MS)

_FAMILIES = (
    (
        "gitorch_lb_requests_total",
        "counter",
        "Requests (http) or connections (tcp) the load balancer finished, per version.",
    ),
    (
        "gitorch_lb_responses_total",
        "counter",
        "Answered requests per version by status class: 5xx (the load balancer's own "
        "502/504 included) or other.",
    ),
    (
        "gitorch_lb_connect_errors_total",
        "counter",
        "Failed connection attempts to a version's backends (retried elsewhere when possible).",
    ),
    (
        "gitorch_lb_request_duration_seconds",
        "histogram",
        "Time from picking a backend to receiving its response head, per version (http).",
    ),
    (
        "gitorch_lb_open_connections",
        "gauge",
        "Requests being served (http) or connections open (tcp) on a version now.",
    ),
    ("gitorch_lb_backends", "gauge", "Backends of a version in the data plane now."),
    (
        "gitorch_lb_weight_percent",
        "gauge",
        "Percent of new traffic the routing table gives a version now.",
    ),
)


def _labels(v: VersionReading, *extra: tuple[str, str]) -> str:
    pairs = [("service", v.route), ("version", v.version), ("revision", v.revision), *extra]
    return "{" + ",".join(f'{k}="{escape_label_value(val)}"' for k, val in pairs) + "}"


def _histogram(name: str, v: VersionReading) -> Iterable[str]:
    cumulative = 0
    for bound, count in zip((*BUCKET_BOUNDS_SECONDS, float("inf")), v.latency, strict=True):
        cumulative += count
        yield f"{name}_bucket{_labels(v, ('le', format_value(bound)))} {cumulative}"
    yield f"{name}_sum{_labels(v)} {format_value(v.latency_sum_ms / 1000)}"
    yield f"{name}_count{_labels(v)} {cumulative}"


def _samples(name: str, versions: list[VersionReading]) -> Iterable[str]:
    for v in versions:
        if name == "gitorch_lb_requests_total":
            yield f"{name}{_labels(v)} {v.requests}"
        elif name == "gitorch_lb_responses_total":
            yield f"{name}{_labels(v, ('code_class', '5xx'))} {v.errors_5xx}"
            yield f"{name}{_labels(v, ('code_class', 'other'))} {v.other_responses}"
        elif name == "gitorch_lb_connect_errors_total":
            yield f"{name}{_labels(v)} {v.connect_errors}"
        elif name == "gitorch_lb_request_duration_seconds":
            yield from _histogram(name, v)
        elif name == "gitorch_lb_open_connections":
            yield f"{name}{_labels(v)} {v.in_flight}"
        elif name == "gitorch_lb_backends":
            yield f"{name}{_labels(v)} {v.backends}"
        elif name == "gitorch_lb_weight_percent":
            yield f"{name}{_labels(v)} {v.weight}"


def render_traffic(reading: TrafficReading) -> str:
    """Every ``gitorch_lb_*`` family of ``reading`` (HELP and TYPE even without series)."""
    versions = [v for route in sorted(reading.routes) for v in reading.routes[route]]
    lines: list[str] = []
    for name, kind, help_text in _FAMILIES:
        lines.append(f"# HELP {name} {escape_help(help_text)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(_samples(name, versions))
    return "\n".join(lines) + "\n"
