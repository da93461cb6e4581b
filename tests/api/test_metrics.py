"""The metrics registry: exposition format (checked by a strict parser), escaping,
histogram arithmetic, thread safety."""

from __future__ import annotations

import math
import threading

import pytest
from api_helpers import parse_prometheus
from hypothesis import given
from hypothesis import strategies as st

from gitorch.api.metrics import Counter, Gauge, Histogram, Metrics, Registry, format_value

GITORCH_FAMILIES = {
    "gitorch_reconcile_total": "counter",
    "gitorch_reconcile_duration_seconds": "histogram",
    "gitorch_rollout_phase": "gauge",
    "gitorch_replicas": "gauge",
    "gitorch_revision_info": "gauge",
    "gitorch_source_fetch_errors_total": "counter",
    "gitorch_webhook_requests_total": "counter",
}


def test_every_gitorch_metric_is_exported_with_its_type() -> None:
    families = parse_prometheus(Metrics().render())
    assert {name: f.type for name, f in families.items()} == GITORCH_FAMILIES
    assert all(f.help for f in families.values())
    # unlabelled metrics and known results show 0 from the start
    assert families["gitorch_source_fetch_errors_total"].samples == [
        ("gitorch_source_fetch_errors_total", {}, 0.0)
    ]
    results = {labels["result"] for _, labels, _ in families["gitorch_reconcile_total"].samples}
    assert results == {"succeeded", "failed", "rolled-back"}


def test_daemon_helpers_keep_gauges_consistent() -> None:
    metrics = Metrics()
    metrics.set_rollout_phase("web", "Progressing")
    metrics.set_rollout_phase("web", "Paused")
    metrics.set_replicas("web", desired=3, ready=2, updated=1)
    metrics.set_replicas("api", desired=1, ready=1, updated=1)
    metrics.set_revision("a" * 40)
    metrics.set_revision("b" * 40)
    families = parse_prometheus(metrics.render())
    phases = {
        labels["phase"]: value
        for _, labels, value in families["gitorch_rollout_phase"].samples
        if labels["service"] == "web"
    }
    assert phases == {"Healthy": 0, "Progressing": 0, "Paused": 1, "Degraded": 0, "RolledBack": 0}
    assert families["gitorch_revision_info"].samples == [
        ("gitorch_revision_info", {"revision": "b" * 40}, 1.0)
    ]
    metrics.forget_service("web")
    families = parse_prometheus(metrics.render())
    assert {labels["service"] for _, labels, _ in families["gitorch_replicas"].samples} == {"api"}
    assert families["gitorch_rollout_phase"].samples == []


def test_histogram_buckets_sum_and_count() -> None:
    histogram = Histogram("h_seconds", "help", buckets=(0.5, 1, 5))
    for value in (0.1, 0.5, 0.7, 3, 100):
        histogram.observe(value)
    registry = Registry()
    registry.register(histogram)
    family = parse_prometheus(registry.render())["h_seconds"]
    buckets = {labels["le"]: v for name, labels, v in family.samples if name.endswith("_bucket")}
    assert buckets == {"0.5": 2, "1": 3, "5": 4, "+Inf": 5}  # le is inclusive
    assert ("h_seconds_sum", {}, 104.3) in family.samples
    assert ("h_seconds_count", {}, 5) in family.samples


def test_labelled_histogram_shows_only_observed_series() -> None:
    histogram = Histogram("h", "help", ["step"], buckets=(1,))
    registry = Registry()
    registry.register(histogram)
    assert parse_prometheus(registry.render())["h"].samples == []
    histogram.observe(2, step="b")
    family = parse_prometheus(registry.render())["h"]
    assert ("h_bucket", {"step": "b", "le": "1"}, 0) in family.samples
    assert ("h_bucket", {"step": "b", "le": "+Inf"}, 1) in family.samples


@given(st.text(max_size=30))
def test_label_values_and_help_round_trip_through_escaping(value: str) -> None:
    gauge = Gauge("g", f"help with {value}", ["v"])
    gauge.set(1, v=value)
    registry = Registry()
    registry.register(gauge)
    family = parse_prometheus(registry.render())["g"]
    assert family.samples == [("g", {"v": value}, 1.0)]


def test_escaping_is_the_formats() -> None:
    gauge = Gauge("g", 'a \\ b\nc "d"', ["v"])
    gauge.set(1, v='x"y\\z\nw')
    assert gauge.render() == (
        '# HELP g a \\\\ b\\nc "d"\n# TYPE g gauge\ng{v="x\\"y\\\\z\\nw"} 1\n'
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (3.0, "3"),
        (0.25, "0.25"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (1e20, "1e+20"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_misuse_is_refused() -> None:
    counter = Counter("c_total", "help", ["result"])
    with pytest.raises(ValueError, match="cannot decrease"):
        counter.inc(-1, result="x")
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(result="x", extra="y")
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc()
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter("bad-name", "help")
    with pytest.raises(ValueError, match="invalid label name"):
        Gauge("g", "help", ["__reserved"])
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "help", ["le"])
    registry = Registry()
    registry.register(Gauge("g", "help"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Gauge("g", "help"))


def test_updates_from_many_threads_are_not_lost_and_renders_stay_valid() -> None:
    metrics = Metrics()
    threads_count, per_thread = 8, 5000
    renders: list[str] = []
    start = threading.Barrier(threads_count + 1)

    def work(i: int) -> None:
        start.wait()
        for n in range(per_thread):
            metrics.reconcile_total.inc(result="succeeded")
            metrics.reconcile_duration_seconds.observe(n % 7)
            metrics.set_replicas(f"svc{i}", desired=n, ready=n, updated=n)

    def render() -> None:
        start.wait()
        for _ in range(50):
            renders.append(metrics.render())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
    threads.append(threading.Thread(target=render))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = threads_count * per_thread
    assert metrics.reconcile_total.get(result="succeeded") == total
    assert metrics.reconcile_duration_seconds.count() == total
    for text in renders:  # each histogram render is internally consistent
        parse_prometheus(text)
    final = parse_prometheus(metrics.render())
    assert ("gitorch_reconcile_duration_seconds_count", {}, total) in (
        final["gitorch_reconcile_duration_seconds"].samples
    )
