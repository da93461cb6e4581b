"""gitorch's metrics through prometheus_client: families and types (checked by a strict
parser), the gauges kept per service, escaping, a failing collector, thread safety."""

from __future__ import annotations

import math
import threading

import pytest
from api_helpers import parse_prometheus
from hypothesis import given
from hypothesis import strategies as st

from gitorch.api.metrics import ControlPlaneCollector, Metrics

GITORCH_FAMILIES = {
    "gitorch_reconcile_total": "counter",
    "gitorch_reconcile_duration_seconds": "histogram",
    "gitorch_rollout_phase": "gauge",
    "gitorch_replicas": "gauge",
    "gitorch_drift_left": "gauge",
    "gitorch_service_failing": "gauge",
    "gitorch_revision_info": "gauge",
    "gitorch_source_fetch_errors_total": "counter",
    "gitorch_webhook_requests_total": "counter",
    "gitorch_autoscale_replicas": "gauge",
    "gitorch_autoscale_metric": "gauge",
    "gitorch_autoscale_decisions_total": "counter",
    "gitorch_node_pool_nodes": "gauge",
    "gitorch_node_pool_failing": "gauge",
    "gitorch_node_pool_decisions_total": "counter",
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


def test_autoscale_series_follow_the_last_decision() -> None:
    metrics = Metrics()
    metrics.set_autoscale(
        "web", desired=3, bounds=(1, 4), readings=[("cpu", 120.0, 50.0), ("rps", None, 10.0)]
    )
    metrics.autoscale_decisions_total.inc(service="web", direction="up")
    families = parse_prometheus(metrics.render())
    counts = {labels["kind"]: v for _, labels, v in families["gitorch_autoscale_replicas"].samples}
    assert counts == {"desired": 3, "min": 1, "max": 4}
    readings = {
        (labels["metric"], labels["kind"]): v
        for _, labels, v in families["gitorch_autoscale_metric"].samples
    }
    # rps could not be read: its target shows, no value is made up.
    assert readings == {("cpu", "value"): 120.0, ("cpu", "target"): 50.0, ("rps", "target"): 10.0}
    assert metrics.value("gitorch_autoscale_decisions_total", service="web", direction="up") == 1
    metrics.set_autoscale("api", desired=1, bounds=(1, 2), readings=[])
    metrics.keep_autoscaled({"api"})  # web lost its autoscale block
    families = parse_prometheus(metrics.render())
    assert {s[1]["service"] for s in families["gitorch_autoscale_replicas"].samples} == {"api"}
    metrics.forget_service("api")
    assert parse_prometheus(metrics.render())["gitorch_autoscale_replicas"].samples == []


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


def test_reconcile_histogram_buckets_sum_and_count() -> None:
    metrics = Metrics()
    for value in (0.04, 0.05, 0.07, 3, 1000):
        metrics.reconcile_duration_seconds.observe(value)
    family = parse_prometheus(metrics.render())["gitorch_reconcile_duration_seconds"]
    buckets = {
        float(labels["le"]): v for name, labels, v in family.samples if name.endswith("_bucket")
    }
    assert buckets[0.05] == 2 and buckets[0.1] == 3 and buckets[5.0] == 4  # le is inclusive
    assert buckets[math.inf] == 5
    assert ("gitorch_reconcile_duration_seconds_count", {}, 5) in family.samples


@given(st.text(max_size=30))
def test_label_values_round_trip_through_escaping(value: str) -> None:
    metrics = Metrics()
    metrics.set_replicas(value, desired=1, ready=1, updated=1)
    family = parse_prometheus(metrics.render())["gitorch_replicas"]
    assert {labels["service"] for _, labels, _ in family.samples} == {value}


def test_a_failing_collector_leaves_only_its_families_out() -> None:
    class Broken:
        def collect(self) -> list[object]:
            raise RuntimeError("the data plane went away")

    metrics = Metrics()
    metrics.add_collector(Broken())
    assert set(parse_prometheus(metrics.render())) == set(GITORCH_FAMILIES)


def test_misuse_is_refused() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="negative"):
        metrics.reconcile_total.inc(-1, result="x")
    with pytest.raises(ValueError, match="label"):
        metrics.reconcile_total.inc(result="x", extra="y")


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
    assert metrics.value("gitorch_reconcile_total", result="succeeded") == total
    assert metrics.value("gitorch_reconcile_duration_seconds_count") == total
    for text in renders:  # each histogram render is internally consistent
        parse_prometheus(text)
    final = parse_prometheus(metrics.render())
    assert ("gitorch_reconcile_duration_seconds_count", {}, total) in (
        final["gitorch_reconcile_duration_seconds"].samples
    )


def test_drift_and_failing_gauges_follow_the_last_pass() -> None:
    metrics = Metrics()
    metrics.set_health("web", drift=2, failing=True)
    assert metrics.value("gitorch_drift_left", service="web") == 2
    assert metrics.value("gitorch_service_failing", service="web") == 1
    metrics.set_health("web", drift=0, failing=False)
    assert metrics.value("gitorch_service_failing", service="web") == 0
    metrics.forget_service("web")
    assert 'service="web"' not in metrics.render()


def test_node_pool_series_follow_the_last_sync_and_leave_with_the_pool() -> None:
    metrics = Metrics()
    metrics.set_node_pool("workers", nodes=2, draining=1, bounds=(0, 5), failing=True)
    metrics.node_pool_decisions_total.inc(pool="workers", action="create")
    families = parse_prometheus(metrics.render())
    nodes = {labels["kind"]: v for _, labels, v in families["gitorch_node_pool_nodes"].samples}
    assert nodes == {"current": 2.0, "draining": 1.0, "min": 0.0, "max": 5.0}
    assert families["gitorch_node_pool_failing"].samples == [
        ("gitorch_node_pool_failing", {"pool": "workers"}, 1.0)
    ]
    metrics.keep_node_pools(set())
    families = parse_prometheus(metrics.render())
    assert families["gitorch_node_pool_nodes"].samples == []


def test_the_control_plane_series_name_the_leader_and_each_hosts_table() -> None:
    metrics = Metrics()
    answers: list[tuple[bool, list[dict[str, object]] | None]] = [
        (
            True,
            [
                {"name": "a", "role": "leader", "table": "drives"},
                {"name": "b", "role": "standby", "table": "refused: web: port taken"},
            ],
        ),
        (False, None),  # etcd did not answer
    ]
    metrics.add_collector(ControlPlaneCollector(lambda: answers[0]))  # type: ignore[arg-type]
    families = parse_prometheus(metrics.render())
    assert families["gitorch_leading"].samples == [("gitorch_leading", {}, 1.0)]
    assert sorted(
        (labels["member"], labels["role"], labels["table"])
        for _, labels, _ in families["gitorch_control_plane_member"].samples
    ) == [("a", "leader", "drives"), ("b", "standby", "refused")]
    answers.pop(0)
    families = parse_prometheus(metrics.render())
    assert families["gitorch_leading"].samples == [("gitorch_leading", {}, 0.0)]
    assert "gitorch_control_plane_member" not in families
