"""gitorch's own metrics, exposed through prometheus_client.

:class:`Metrics` defines every gitorch metric in one place, so names and labels are
spelled once, on a registry of its own (nothing of the process's default registry leaks
in). Counters and the reconcile histogram are prometheus_client's; the gauges that
describe services (rollout phase, replicas, revision) are a custom collector over the
daemon's latest view, so a service that left Git simply stops being yielded. Collectors
added with :meth:`Metrics.add_collector` (the load balancer's per-version figures, read
at scrape time) come last; one that fails is logged and left out rather than failing
the whole scrape.

The exposition is the Prometheus text format 0.0.4 (``generate_latest``); the library
escapes label values and help texts, and is thread-safe: the reconcile loop updates while
API threads scrape.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

log = logging.getLogger("gitorch.api.metrics")

# Counters get no "_created" series: gitorch's counters start with the process, and the
# extra family per counter would double what a scrape carries for nothing.
prometheus_client.disable_created_metrics()

#: Content-Type of the text exposition format.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Seconds; a reconcile ranges from a no-op pass (ms) to a long canary (minutes).
RECONCILE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

#: Rollout phases exported as gitorch_rollout_phase (one series per phase, 1 = current).
ROLLOUT_PHASES = ("Healthy", "Progressing", "Paused", "Degraded", "RolledBack")

#: Results of gitorch_reconcile_total, shown at 0 from the start.
RECONCILE_RESULTS = ("succeeded", "failed", "rolled-back")

#: Results of gitorch_webhook_requests_total (see gitorch.api.webhook).
WEBHOOK_RESULTS = ("accepted", "ping", "ignored", "unauthorized", "disabled", "invalid")


class Collector(Protocol):
    """What prometheus_client calls at each scrape."""

    def collect(self) -> Iterable[Metric]: ...


class _Labelled:
    """A prometheus_client counter or histogram called with labels as keywords (the
    daemon's ``metrics.reconcile_total.inc(result="failed")``)."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric

    def _child(self, labels: dict[str, str]) -> Counter | Histogram:
        return self._metric.labels(**labels) if labels else self._metric

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        child = self._child(labels)
        assert isinstance(child, Counter)
        child.inc(amount)

    def observe(self, value: float, **labels: str) -> None:
        child = self._child(labels)
        assert isinstance(child, Histogram)
        child.observe(value)


class _ServiceGauges:
    """gitorch_rollout_phase, gitorch_replicas and gitorch_revision_info, from the
    daemon's latest view (a custom collector: a forgotten service is simply not yielded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.phases: dict[str, str] = {}
        self.replicas: dict[str, tuple[int, int, int]] = {}
        self.drift: dict[str, int] = {}
        self.failing: dict[str, bool] = {}
        self.revision: str | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            phases = dict(self.phases)
            replicas = dict(self.replicas)
            drift = dict(self.drift)
            failing = dict(self.failing)
            revision = self.revision
        phase = GaugeMetricFamily(
            "gitorch_rollout_phase",
            "Rollout phase of each service: 1 for the current phase, 0 for the others.",
            labels=["service", "phase"],
        )
        for service, current in sorted(phases.items()):
            known = ROLLOUT_PHASES if current in ROLLOUT_PHASES else (*ROLLOUT_PHASES, current)
            for name in known:
                phase.add_metric([service, name], 1 if name == current else 0)
        yield phase
        counts = GaugeMetricFamily(
            "gitorch_replicas",
            "Replicas of each service by state (desired, ready, updated).",
            labels=["service", "state"],
        )
        for service, (desired, ready, updated) in sorted(replicas.items()):
            for state, value in (("desired", desired), ("ready", ready), ("updated", updated)):
                counts.add_metric([service, state], value)
        yield counts
        drifted = GaugeMetricFamily(
            "gitorch_drift_left",
            "Drift items a service's policy (drift: warn) leaves alone, seen by the last pass.",
            labels=["service"],
        )
        for service, count in sorted(drift.items()):
            drifted.add_metric([service], count)
        yield drifted
        failed = GaugeMetricFamily(
            "gitorch_service_failing",
            "1 while a failure of the service itself (a port it cannot bind) backs off.",
            labels=["service"],
        )
        for service, value in sorted(failing.items()):
            failed.add_metric([service], 1 if value else 0)
        yield failed
        info = GaugeMetricFamily(
            "gitorch_revision_info",
            "The Git revision last applied (value always 1).",
            labels=["revision"],
        )
        if revision is not None:
            info.add_metric([revision], 1)
        yield info


class _AutoscaleGauges:
    """gitorch_autoscale_replicas (desired, min, max) and gitorch_autoscale_metric (value,
    target), as the autoscaler's last sync left them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, tuple[int, int, int]] = {}
        self.readings: dict[str, list[tuple[str, float | None, float]]] = {}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = dict(self.counts)
            readings = dict(self.readings)
        replicas = GaugeMetricFamily(
            "gitorch_autoscale_replicas",
            "The horizontal autoscaler's count of each service and its bounds.",
            labels=["service", "kind"],
        )
        for service, (desired, low, high) in sorted(counts.items()):
            for kind, count in (("desired", desired), ("min", low), ("max", high)):
                replicas.add_metric([service, kind], count)
        yield replicas
        metric = GaugeMetricFamily(
            "gitorch_autoscale_metric",
            "Each autoscaling metric's last reading and its target (utilization in percent "
            "of requests, rps per replica, p99 latency in ms, a Prometheus query's value); "
            "no value series while it cannot be read.",
            labels=["service", "metric", "kind"],
        )
        for service, items in sorted(readings.items()):
            for name, value, target in items:
                if value is not None:
                    metric.add_metric([service, name, "value"], value)
                metric.add_metric([service, name, "target"], target)
        yield metric


class _NodePoolGauges:
    """gitorch_node_pool_nodes (current, draining, min, max) and gitorch_node_pool_failing
    (the provider's last call failed), as the node-pool sync left them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pools: dict[str, tuple[int, int, int, int, bool]] = {}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            pools = dict(self.pools)
        nodes = GaugeMetricFamily(
            "gitorch_node_pool_nodes",
            "The nodes of each NodePool (current, of which draining) and its bounds.",
            labels=["pool", "kind"],
        )
        failing = GaugeMetricFamily(
            "gitorch_node_pool_failing",
            "1 while a NodePool's provider failed at its last call.",
            labels=["pool"],
        )
        for pool, (current, draining, low, high, bad) in sorted(pools.items()):
            for kind, count in (
                ("current", current),
                ("draining", draining),
                ("min", low),
                ("max", high),
            ):
                nodes.add_metric([pool, kind], count)
            failing.add_metric([pool], 1 if bad else 0)
        yield nodes
        yield failing


class ControlPlaneCollector:
    """With etcd state: ``gitorch_leading`` (1 while this daemon leads) and
    ``gitorch_control_plane_member`` (1 per daemon holding a lease, labelled with its
    role and how its host serves the leader's routing table), read at scrape time.
    ``read()`` gives (leading, the members' records as status shows them; None when
    etcd did not answer: then only ``gitorch_leading`` is yielded)."""

    def __init__(self, read: Callable[[], tuple[bool, list[dict[str, Any]] | None]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        leading, members = self._read()
        yield GaugeMetricFamily(
            "gitorch_leading", "1 while this daemon leads its etcd namespace.", value=int(leading)
        )
        if members is None:
            return
        family = GaugeMetricFamily(
            "gitorch_control_plane_member",
            "1 per daemon holding a lease: its role, and how its host serves the leader's "
            "routing table (drives, shares, follows, behind, refused, no).",
            labels=["member", "role", "table"],
        )
        for member in members:
            table = str(member.get("table") or "")
            family.add_metric(
                [str(member.get("name")), str(member.get("role")), table.split(":", 1)[0]], 1
            )
        yield family


class _Guarded:
    """A collector whose failure leaves its families out of the scrape (logged), rather
    than failing the whole scrape."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._collector.collect())
        except Exception:
            log.exception("a metrics collector failed; its families are left out")
            return
        yield from families


class Metrics:
    """Every metric gitorch exports, defined once.

    The daemon updates these as it reconciles; ``GET /metrics`` renders :meth:`render`.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reconcile_total = Counter(
            "gitorch_reconcile_total",
            "Reconcile passes, by result.",
            ["result"],
            registry=self.registry,
        )
        self.reconcile_total = _Labelled(reconcile_total)
        self.reconcile_duration_seconds = _Labelled(
            Histogram(
                "gitorch_reconcile_duration_seconds",
                "Duration of one reconcile pass in seconds.",
                buckets=RECONCILE_BUCKETS,
                registry=self.registry,
            )
        )
        self._services = _ServiceGauges()
        self.registry.register(self._services)
        self.source_fetch_errors_total = _Labelled(
            Counter(
                "gitorch_source_fetch_errors_total",
                "Fetches of the Git source that failed.",
                registry=self.registry,
            )
        )
        webhook_requests_total = Counter(
            "gitorch_webhook_requests_total",
            "Webhook deliveries received, by result.",
            ["result"],
            registry=self.registry,
        )
        self.webhook_requests_total = _Labelled(webhook_requests_total)
        self._autoscale = _AutoscaleGauges()
        self.registry.register(self._autoscale)
        self.autoscale_decisions_total = _Labelled(
            Counter(
                "gitorch_autoscale_decisions_total",
                "Changes of count decided by the horizontal autoscaler, by direction.",
                ["service", "direction"],
                registry=self.registry,
            )
        )
        self._pools = _NodePoolGauges()
        self.registry.register(self._pools)
        self.node_pool_decisions_total = _Labelled(
            Counter(
                "gitorch_node_pool_decisions_total",
                "Nodes made (create), drained (drain) and deleted (delete) by NodePools.",
                ["pool", "action"],
                registry=self.registry,
            )
        )
        # Known results show 0 from the start (rate() needs a starting point).
        for result in RECONCILE_RESULTS:
            reconcile_total.labels(result=result)
        for result in WEBHOOK_RESULTS:
            webhook_requests_total.labels(result=result)

    def add_collector(self, collector: Collector) -> None:
        """Families read at scrape time (``collector.collect()``), after gitorch's own."""
        self.registry.register(_Guarded(collector))

    def value(self, name: str, **labels: str) -> float:
        """One sample's value now (0 when absent): for tests and logs."""
        return self.registry.get_sample_value(name, labels) or 0.0

    # -- the gauges that describe services ---------------------------------------------

    def set_rollout_phase(self, service: str, phase: str) -> None:
        """``phase`` is 1 and every other phase 0 for ``service``."""
        with self._services._lock:
            self._services.phases[service] = phase

    def set_replicas(self, service: str, *, desired: int, ready: int, updated: int) -> None:
        with self._services._lock:
            self._services.replicas[service] = (desired, ready, updated)

    def set_health(self, service: str, *, drift: int, failing: bool) -> None:
        """Drift left alone and the service's own failure, as the last pass saw them."""
        with self._services._lock:
            self._services.drift[service] = drift
            self._services.failing[service] = failing

    def forget_service(self, service: str) -> None:
        """Drop every series of a service that is no longer in Git."""
        with self._services._lock:
            self._services.phases.pop(service, None)
            self._services.replicas.pop(service, None)
            self._services.drift.pop(service, None)
            self._services.failing.pop(service, None)
        with self._autoscale._lock:
            self._autoscale.counts.pop(service, None)
            self._autoscale.readings.pop(service, None)

    def set_autoscale(
        self,
        service: str,
        *,
        desired: int,
        bounds: tuple[int, int],
        readings: list[tuple[str, float | None, float]],
    ) -> None:
        """The autoscaler's last decision for ``service``: its count, bounds and readings."""
        with self._autoscale._lock:
            self._autoscale.counts[service] = (desired, *bounds)
            self._autoscale.readings[service] = list(readings)

    def set_node_pool(
        self,
        pool: str,
        *,
        nodes: int,
        draining: int,
        bounds: tuple[int, int],
        failing: bool,
    ) -> None:
        """A NodePool's nodes and bounds after its last sync."""
        with self._pools._lock:
            self._pools.pools[pool] = (nodes, draining, *bounds, failing)

    def keep_node_pools(self, pools: set[str]) -> None:
        """Drop the series of every pool not in ``pools`` (it left Git, its nodes gone)."""
        with self._pools._lock:
            for gone in set(self._pools.pools) - pools:
                self._pools.pools.pop(gone, None)

    def keep_autoscaled(self, services: set[str]) -> None:
        """Drop the autoscale series of every service not in ``services``."""
        with self._autoscale._lock:
            for gone in set(self._autoscale.counts) - services:
                self._autoscale.counts.pop(gone, None)
                self._autoscale.readings.pop(gone, None)

    def set_revision(self, revision: str) -> None:
        """Only the revision last applied has a series."""
        with self._services._lock:
            self._services.revision = revision

    def render(self) -> str:
        """Every metric in the text exposition format 0.0.4 (ends with a newline)."""
        return prometheus_client.generate_latest(self.registry).decode("utf-8")
