"""A tiny Prometheus metrics registry (no dependency) and gitorch's own metrics.

Three kinds, each with optional labels: :class:`Counter` (only goes up), :class:`Gauge`
(set to anything) and :class:`Histogram` (cumulative buckets, ``_sum``, ``_count``).
:meth:`Registry.render` writes the text exposition format 0.0.4 that Prometheus scrapes::

    # HELP gitorch_reconcile_total Reconcile passes, by result.
    # TYPE gitorch_reconcile_total counter
    gitorch_reconcile_total{result="succeeded"} 3

Every metric has its own lock, so the reconcile loop and API threads may update and
render concurrently; a render sees each metric at one consistent instant.

:class:`Metrics` defines every gitorch metric in one place, so names and labels are
spelled once.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

log = logging.getLogger("gitorch.api.metrics")

#: Content-Type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

#: Seconds; a reconcile ranges from a no-op pass (ms) to a long canary (minutes).
RECONCILE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``-Inf``, ``NaN``, ``3``, ``0.25``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    """Label values escape backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """HELP text escapes backslash and line feed (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


LabelValues = tuple[str, ...]


class _Metric(ABC):
    """Name, help, label names, a lock, and the HELP/TYPE header."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} on {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names on {name}")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(
                f"{self.name} takes labels {list(self.labelnames)}, got {sorted(labels)}"
            )
        return tuple(str(labels[name]) for name in self.labelnames)

    def _labels_text(self, key: LabelValues, extra: tuple[tuple[str, str], ...] = ()) -> str:
        pairs = [*zip(self.labelnames, key, strict=True), *extra]
        if not pairs:
            return ""
        inner = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
        return "{" + inner + "}"

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    @abstractmethod
    def samples(self) -> list[str]:
        """The sample lines of this metric (each kind renders its own)."""

    def render(self) -> str:
        return "\n".join([*self.header(), *self.samples()]) + "\n"


class _Scalar(_Metric):
    """Shared storage of counters and gauges: one float per label set."""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        # A metric without labels has exactly one series and shows 0 before any update.
        self._values: dict[LabelValues, float] = {} if self.labelnames else {(): 0.0}

    def get(self, **labels: str) -> float:
        """Current value of one series (0 if never touched)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{self._labels_text(key)} {format_value(v)}" for key, v in items]


class Counter(_Scalar):
    """A value that only goes up (restarts at 0 with the process)."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def touch(self, **labels: str) -> None:
        """Show the series at 0 before it first happens (rate() needs a starting point)."""
        key = self._key(labels)
        with self._lock:
            self._values.setdefault(key, 0.0)


class Gauge(_Scalar):
    """A value that is set: replicas, phases, info."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def remove(self, **labels: str) -> None:
        """Drop one series (a service that left Git must not linger)."""
        key = self._key(labels)
        with self._lock:
            self._values.pop(key, None)

    def remove_matching(self, **labels: str) -> None:
        """Drop every series whose labels include ``labels`` (e.g. all of one service)."""
        wanted = {self.labelnames.index(name): str(value) for name, value in labels.items()}
        with self._lock:
            for key in [k for k in self._values if all(k[i] == v for i, v in wanted.items())]:
                del self._values[key]

    def replace(self, series: Iterable[tuple[dict[str, str], float]]) -> None:
        """Set the whole gauge at once: series not given disappear (one atomic update)."""
        new = {self._key(labels): float(value) for labels, value in series}
        with self._lock:
            self._values = new


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = RECONCILE_BUCKETS,
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        super().__init__(name, help_text, labelnames)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct and not empty")
        self.buckets = (*bounds, math.inf)
        # per label set: (count per bucket, non-cumulative), sum, count
        self._series: dict[LabelValues, tuple[list[int], float, int]] = (
            {} if self.labelnames else {(): ([0] * len(self.buckets), 0.0, 0)}
        )

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total, count = self._series.get(key, ([0] * len(self.buckets), 0.0, 0))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            self._series[key] = (counts, total + value, count + 1)

    def count(self, **labels: str) -> int:
        key = self._key(labels)
        with self._lock:
            found = self._series.get(key)
        return 0 if found is None else found[2]

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((key, (list(c), s, n)) for key, (c, s, n) in self._series.items())
        lines: list[str] = []
        for key, (counts, total, count) in items:
            cumulative = 0
            for bound, in_bucket in zip(self.buckets, counts, strict=True):
                cumulative += in_bucket
                le = (("le", format_value(bound)),)
                lines.append(f"{self.name}_bucket{self._labels_text(key, le)} {cumulative}")
            lines.append(f"{self.name}_sum{self._labels_text(key)} {format_value(total)}")
            lines.append(f"{self.name}_count{self._labels_text(key)} {count}")
        return lines


M = TypeVar("M", bound=_Metric)


class Registry:
    """An ordered set of metrics with unique names, rendered together.

    Collectors (:meth:`add_collector`) render families read at scrape time (the load
    balancer's figures); they come after the registered metrics, and one that fails is
    logged and left out rather than failing the whole scrape.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Callable[[], str]] = []
        self._lock = threading.Lock()

    def add_collector(self, collector: Callable[[], str]) -> None:
        """Append ``collector()``'s text (whole families, ending with a newline) to every
        render. Its family names must not clash with registered metrics."""
        with self._lock:
            self._collectors.append(collector)

    def register(self, metric: M) -> M:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        """Every metric in the text exposition format 0.0.4 (ends with a newline)."""
        with self._lock:
            metrics = list(self._metrics.values())
            collectors = list(self._collectors)
        parts = [metric.render() for metric in metrics]
        for collector in collectors:
            try:
                parts.append(collector())
            except Exception:
                log.exception("a metrics collector failed; its families are left out")
        return "".join(parts)


#: Rollout phases exported as gitorch_rollout_phase (one series per phase, 1 = current).
ROLLOUT_PHASES = ("Healthy", "Progressing", "Paused", "Degraded", "RolledBack")

#: Results of gitorch_reconcile_total, shown at 0 from the start.
RECONCILE_RESULTS = ("succeeded", "failed", "rolled-back")

#: Results of gitorch_webhook_requests_total (see gitorch.api.webhook).
WEBHOOK_RESULTS = ("accepted", "ping", "ignored", "unauthorized", "disabled", "invalid")


class Metrics:
    """Every metric gitorch exports, defined once.

    The daemon updates these as it reconciles; ``GET /metrics`` renders :attr:`registry`.
    """

    def __init__(self) -> None:
        self.registry = Registry()
        reg = self.registry.register
        self.reconcile_total = reg(
            Counter("gitorch_reconcile_total", "Reconcile passes, by result.", ["result"])
        )
        self.reconcile_duration_seconds = reg(
            Histogram(
                "gitorch_reconcile_duration_seconds",
                "Duration of one reconcile pass in seconds.",
                buckets=RECONCILE_BUCKETS,
            )
        )
        self.rollout_phase = reg(
            Gauge(
                "gitorch_rollout_phase",
                "Rollout phase of each service: 1 for the current phase, 0 for the others.",
                ["service", "phase"],
            )
        )
        self.replicas = reg(
            Gauge(
                "gitorch_replicas",
                "Replicas of each service by state (desired, ready, updated).",
                ["service", "state"],
            )
        )
        self.revision_info = reg(
            Gauge(
                "gitorch_revision_info",
                "The Git revision last applied (value always 1).",
                ["revision"],
            )
        )
        self.source_fetch_errors_total = reg(
            Counter(
                "gitorch_source_fetch_errors_total",
                "Fetches of the Git source that failed.",
            )
        )
        self.webhook_requests_total = reg(
            Counter(
                "gitorch_webhook_requests_total",
                "Webhook deliveries received, by result.",
                ["result"],
            )
        )
        for result in RECONCILE_RESULTS:
            self.reconcile_total.touch(result=result)
        for result in WEBHOOK_RESULTS:
            self.webhook_requests_total.touch(result=result)

    # -- helpers that keep multi-series gauges consistent -------------------------------

    def set_rollout_phase(self, service: str, phase: str) -> None:
        """Mark ``phase`` 1 and every other phase 0 for ``service``."""
        phases = ROLLOUT_PHASES if phase in ROLLOUT_PHASES else (*ROLLOUT_PHASES, phase)
        for name in phases:
            self.rollout_phase.set(1 if name == phase else 0, service=service, phase=name)

    def set_replicas(self, service: str, *, desired: int, ready: int, updated: int) -> None:
        for state, value in (("desired", desired), ("ready", ready), ("updated", updated)):
            self.replicas.set(value, service=service, state=state)

    def forget_service(self, service: str) -> None:
        """Drop every series of a service that is no longer in Git."""
        self.rollout_phase.remove_matching(service=service)
        self.replicas.remove_matching(service=service)

    def set_revision(self, revision: str) -> None:
        """Only the revision last applied keeps a series."""
        self.revision_info.replace([({"revision": revision}, 1)])

    def render(self) -> str:
        return self.registry.render()
