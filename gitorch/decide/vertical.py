"""Vertical recommendations (requests from observed usage): pure.

As the Kubernetes VPA recommender does, usage samples go into histograms with exponential
buckets (each 5% wider than the one before) whose samples decay with a half-life of 24 h:
a sample's weight doubles every half-life after a reference time, which is the same as
older samples halving, without rewriting the histogram at every sample.

* cpu: the 90th percentile of the weighted cpu samples;
* memory: the peak, meaning the highest bucket that still holds the weight of one sample
  taken within the last four half-lives (a spike four days old is forgotten);

each the upper bound of its bucket, plus a 15% margin, then held within ``minAllowed`` and
``maxAllowed``. :class:`Histograms` is stored as JSON in the autoscaler record.

``mode: Auto``: when a recommendation differs from the requests the service runs by more
than 20% (:data:`AUTO_THRESHOLD`) and no rollout runs, the autoscaler's sync records it as
the service's *applied* requests (:func:`auto_update`); every pass (and ``gitorch plan``)
then takes the Service with those requests (:func:`with_vertical`, limits scaled in
proportion as the VPA does), so its template changes and it rolls out through its
strategy like any change of template. The applied requests are the autoscaler's to own:
not drift from Git's ``resources.requests``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gitorch.manifests.build import build_service
from gitorch.manifests.model import DesiredState, ResourceList, Service, VerticalScaling
from gitorch.manifests.quantities import format_cpu, format_memory, parse_cpu, parse_memory
from gitorch.state.records import AutoscalerRecord

#: ``mode: Auto`` applies a recommendation more than this far from the running requests.
AUTO_THRESHOLD = 0.2

HALF_LIFE_SECONDS = 24 * 3600.0
#: Each bucket is this much wider than the one before.
BUCKET_RATIO = 1.05
#: Upper bound of the first bucket: 10 millicores, 10 MiB.
FIRST_CPU_BUCKET = 10.0
FIRST_MEMORY_BUCKET = 10.0 * 1024 * 1024
CPU_PERCENTILE = 0.9
#: A memory bucket counts for the peak while it holds at least this share of the weight a
#: sample taken now has (2^-4: four half-lives).
PEAK_WEIGHT = 2.0**-4
SAFETY_MARGIN = 0.15
MIB = 1024 * 1024
#: Renormalize weights before 2^x grows past floating point comfort.
MAX_EXPONENT = 30.0
#: A recommendation needs this many samples at least.
MIN_SAMPLES = 3


def bucket_of(value: float, first: float) -> int:
    """The bucket index of ``value`` (bucket 0 holds [0, first))."""
    if value < first:
        return 0
    return 1 + int(math.log(value / first, BUCKET_RATIO))


def bucket_end(index: int, first: float) -> float:
    """The upper bound of bucket ``index``."""
    return first * BUCKET_RATIO**index


@dataclass(frozen=True)
class Histogram:
    """Sparse decaying histogram: bucket index -> weight relative to ``reference``."""

    first: float
    reference: float = 0.0
    weights: Mapping[int, float] = field(default_factory=dict)

    def add(self, value: float, at: float) -> Histogram:
        reference = self.reference or at
        weights = dict(self.weights)
        exponent = (at - reference) / HALF_LIFE_SECONDS
        if exponent > MAX_EXPONENT:  # move the reference forward: divide every weight
            scale = 2.0 ** -((at - reference) / HALF_LIFE_SECONDS)
            weights = {k: w * scale for k, w in weights.items() if w * scale > 1e-9}
            reference, exponent = at, 0.0
        index = bucket_of(max(value, 0.0), self.first)
        weights[index] = weights.get(index, 0.0) + 2.0**exponent
        return Histogram(self.first, reference, weights)

    def _now_weight(self, now: float) -> float:
        """The weight a sample taken at ``now`` gets."""
        return 2.0 ** ((now - self.reference) / HALF_LIFE_SECONDS)

    def percentile(self, q: float) -> float | None:
        total = sum(self.weights.values())
        if total <= 0:
            return None
        seen = 0.0
        for index in sorted(self.weights):
            seen += self.weights[index]
            if seen >= q * total:
                return bucket_end(index, self.first)
        return bucket_end(max(self.weights), self.first)

    def peak(self, now: float) -> float | None:
        floor = PEAK_WEIGHT * self._now_weight(now)
        kept = [index for index, weight in self.weights.items() if weight >= floor * 0.999]
        return bucket_end(max(kept), self.first) if kept else None

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "weights": {str(k): round(w, 9) for k, w in sorted(self.weights.items())},
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None, first: float) -> Histogram:
        raw = raw or {}
        weights = {int(k): float(w) for k, w in (raw.get("weights") or {}).items()}
        return cls(first, float(raw.get("reference", 0.0)), weights)


@dataclass(frozen=True)
class Histograms:
    """A service's cpu and memory usage histograms and how many samples went in."""

    cpu: Histogram = Histogram(FIRST_CPU_BUCKET)
    memory: Histogram = Histogram(FIRST_MEMORY_BUCKET)
    samples: int = 0

    def add(self, samples: Sequence[tuple[float, int]], at: float) -> Histograms:
        """Add one sync's per-replica ``(cpu millicores, memory bytes)`` samples."""
        cpu, memory = self.cpu, self.memory
        for cpu_millis, memory_bytes in samples:
            cpu = cpu.add(cpu_millis, at)
            memory = memory.add(float(memory_bytes), at)
        return Histograms(cpu, memory, self.samples + len(samples))

    def to_json(self) -> dict[str, Any]:
        return {"cpu": self.cpu.to_json(), "memory": self.memory.to_json(), "samples": self.samples}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Histograms:
        raw = raw or {}
        return cls(
            Histogram.from_json(raw.get("cpu"), FIRST_CPU_BUCKET),
            Histogram.from_json(raw.get("memory"), FIRST_MEMORY_BUCKET),
            int(raw.get("samples", 0)),
        )


@dataclass(frozen=True)
class Recommendation:
    """Requests to set, from usage; None while there are too few samples."""

    cpu_millis: int | None
    memory_bytes: int | None
    samples: int


def _whole_mib(size: float) -> float:
    """Memory rounded up to a whole MiB: a request people can read (``231Mi``)."""
    return math.ceil(size / MIB) * MIB


def _bounded(value: float, low: int | None, high: int | None) -> int:
    result = math.ceil(value)
    if low is not None:
        result = max(result, low)
    if high is not None:
        result = min(result, high)
    return result


def recommend(histograms: Histograms, spec: VerticalScaling, now: float) -> Recommendation:
    """p90 cpu and peak memory, with the margin, within the spec's bounds."""
    if histograms.samples < MIN_SAMPLES:
        return Recommendation(None, None, histograms.samples)
    low: ResourceList = spec.min_allowed
    high: ResourceList = spec.max_allowed
    cpu = histograms.cpu.percentile(CPU_PERCENTILE)
    memory = histograms.memory.peak(now)
    return Recommendation(
        _bounded(cpu * (1 + SAFETY_MARGIN), low.cpu_millis, high.cpu_millis)
        if cpu is not None
        else None,
        _bounded(_whole_mib(memory * (1 + SAFETY_MARGIN)), low.memory_bytes, high.memory_bytes)
        if memory is not None
        else None,
        histograms.samples,
    )


def differs(current: int | None, recommended: int | None, by: float = 0.2) -> bool:
    """Whether a recommendation is more than ``by`` away from the current request."""
    if recommended is None:
        return False
    if not current:
        return True
    return abs(recommended - current) / current > by


def recommendation_lines(
    mode: str,
    requests: Mapping[str, Any],
    recommendation: Mapping[str, Any] | None,
    applied: Mapping[str, Any] | None = None,
) -> tuple[str, ...]:
    """``requests.cpu 250m -> 120m`` per resource, from a service's canonical requests and
    a stored recommendation (``{"cpu", "memory", "samples"}``); why there is none yet;
    with ``mode: Auto``, what it last applied (the record's ``applied``, with ``from``)."""
    if mode == "Off":
        return ()
    done: tuple[str, ...] = ()
    if mode == "Auto" and applied and isinstance(applied.get("from"), Mapping):
        before = applied["from"]
        done = tuple(
            f"applied by mode Auto: requests.{resource} {fmt(int(before[resource]))} -> "
            f"{fmt(int(applied[resource]))}"
            for resource, fmt in (("cpu", format_cpu), ("memory", format_memory))
            if applied.get(resource) is not None
            and before.get(resource) is not None
            and int(applied[resource]) != int(before[resource])
        )
    rec = recommendation or {}
    samples = int(rec.get("samples") or 0)
    if rec.get("cpu") is None and rec.get("memory") is None:
        return (*done, f"no recommendation yet ({samples} of {MIN_SAMPLES} usage samples)")
    lines = []
    for resource, fmt in (("cpu", format_cpu), ("memory", format_memory)):
        value = rec.get(resource)
        if value is None:
            continue
        now = requests.get(resource, "(none)")
        lines.append(f"requests.{resource} {now} -> {fmt(int(value))}")
    note = f"from {samples} usage samples"
    if mode == "Auto":
        note += (
            f"; mode Auto applies it (a rolling update) when it differs by more than "
            f"{AUTO_THRESHOLD:.0%}"
        )
    return (*done, *lines, note)


def _auto_mode(service: Service) -> bool:
    auto = service.autoscale
    return auto is not None and auto.vertical is not None and auto.vertical.mode == "Auto"


def applied_requests(record: AutoscalerRecord | None) -> Mapping[str, int] | None:
    """The requests ``mode: Auto`` applied (``{"cpu": millicores, "memory": bytes}``, each
    optional), from the autoscaler record; None when it applied none."""
    if record is None:
        return None
    applied = record.usage.get("applied")
    if not isinstance(applied, Mapping):
        return None
    return {k: int(applied[k]) for k in ("cpu", "memory") if applied.get(k) is not None}


def running_requests(service: Service, record: AutoscalerRecord | None) -> dict[str, int]:
    """The requests the service runs with: the ones Auto applied, else Git's."""
    git = {
        "cpu": service.resources.requests.cpu_millis,
        "memory": service.resources.requests.memory_bytes,
    }
    applied = applied_requests(record) if _auto_mode(service) else None
    out = {k: v for k, v in git.items() if v is not None}
    out.update(applied or {})
    return out


def auto_update(
    service: Service, record: AutoscalerRecord | None, recommendation: Recommendation
) -> dict[str, int] | None:
    """The requests ``mode: Auto`` applies now: the recommendation, when one of its values
    differs from the running request by more than :data:`AUTO_THRESHOLD` (None: keep)."""
    if not _auto_mode(service):
        return None
    running = running_requests(service, record)
    proposed = {"cpu": recommendation.cpu_millis, "memory": recommendation.memory_bytes}
    if not any(
        differs(running.get(k), v, AUTO_THRESHOLD) for k, v in proposed.items() if v is not None
    ):
        return None
    return {**running, **{k: v for k, v in proposed.items() if v is not None}}


def with_vertical(
    desired: DesiredState, autoscalers: Mapping[str, AutoscalerRecord]
) -> DesiredState:
    """``desired`` with the requests ``mode: Auto`` applied to each such Service (limits
    scaled by the same factor, as the VPA keeps their ratio); unchanged when none."""
    services: dict[str, Service] = {}
    changed = False
    for name, service in desired.services.items():
        applied = applied_requests(autoscalers.get(name)) if _auto_mode(service) else None
        services[name] = _with_requests(service, applied) if applied else service
        changed = changed or services[name] is not service
    return replace(desired, services=services) if changed else desired


def _with_requests(service: Service, applied: Mapping[str, int]) -> Service:
    canonical = dict(service.canonical)
    spec = dict(canonical["spec"])
    resources = dict(spec["resources"])
    requests = dict(resources.get("requests") or {})
    limits = dict(resources.get("limits") or {})
    for key, parse, fmt in (
        ("cpu", parse_cpu, format_cpu),
        ("memory", parse_memory, format_memory),
    ):
        value = applied.get(key)
        if value is None:
            continue
        before = parse(requests[key]) if key in requests else None
        if key in limits:
            limit = parse(limits[key])
            if before:
                limits[key] = fmt(max(value, math.ceil(limit * value / before)))
            value = min(value, parse(limits[key]))
        requests[key] = fmt(value)
    resources["requests"] = requests
    resources["limits"] = limits
    spec["resources"] = resources
    canonical["spec"] = spec
    if canonical == service.canonical:
        return service
    return build_service(canonical, service.origin)
