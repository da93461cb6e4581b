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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gitorch.manifests.model import ResourceList, VerticalScaling
from gitorch.manifests.quantities import format_cpu, format_memory

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
    mode: str, requests: Mapping[str, Any], recommendation: Mapping[str, Any] | None
) -> tuple[str, ...]:
    """``requests.cpu 250m -> 120m`` per resource, from a service's canonical requests and
    a stored recommendation (``{"cpu", "memory", "samples"}``); why there is none yet."""
    if mode == "Off":
        return ()
    rec = recommendation or {}
    samples = int(rec.get("samples") or 0)
    if rec.get("cpu") is None and rec.get("memory") is None:
        return (f"no recommendation yet ({samples} of {MIN_SAMPLES} usage samples)",)
    lines = []
    for resource, fmt in (("cpu", format_cpu), ("memory", format_memory)):
        value = rec.get(resource)
        if value is None:
            continue
        now = requests.get(resource, "(none)")
        lines.append(f"requests.{resource} {now} -> {fmt(int(value))}")
    note = f"from {samples} usage samples"
    if mode == "Auto":
        note += "; mode Auto is not built yet: recommendation only, nothing is applied"
    return (*lines, note)
