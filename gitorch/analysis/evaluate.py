"""One measurement of an analysis from the load balancer's own per-version figures (pure).

The figures are a window: what the data plane counted for one version between two
snapshots (:meth:`gitorch.traffic.figures.VersionFigures.since`). The verdict:

- fewer than ``minRequests`` requests in the window: **inconclusive**. Too little traffic
  proves nothing, and an analysis must never pass by default;
- otherwise **failed** when the share of non-5xx answers is below ``successRate`` or the
  p99 latency is above ``maxLatencyP99`` (each only when set). The p99 is the window's
  own, from its latency histogram: both data planes keep one for http (HAProxy's is built
  from its request log). A window without latency samples but with a data plane's average
  (HAProxy's ``rtime`` when every log line of the window was lost) fails when that mean is
  above the limit, since p99 >= mean; **inconclusive** when a latency limit is set but
  nothing proves the p99 either way (tcp traffic, a mean below the limit);
- otherwise **successful**.

With a ``baseline`` (A/B tests, canaries: the stable version's window over the same
period) both versions' figures are reported in ``value`` side by side; the verdict stays on
the absolute limits, which are what the manifest states.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TypeAlias

from gitorch.manifests.model import Analysis
from gitorch.traffic.figures import VersionFigures

#: The figures of one version over a measurement window (``later.since(earlier)``).
VersionWindow: TypeAlias = VersionFigures


class MeasurementPhase(StrEnum):
    SUCCESSFUL = "successful"
    FAILED = "failed"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"  # the measurement could not be taken (Prometheus did not answer, ...)


@dataclass(frozen=True)
class Measurement:
    """The verdict of one measurement, what it saw (``value``) and one line saying why."""

    phase: MeasurementPhase
    value: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    message: str = ""


def figures_value(window: VersionWindow) -> dict[str, object]:
    """What a window shows, as plain data for status and history."""
    rate = window.success_rate
    p99 = window.p99
    value: dict[str, object] = {
        "version": window.version,
        "requests": window.requests,
        "errors5xx": window.errors_5xx,
        "successRate": None if rate is None else round(rate, 6),
        "p99Ms": None if p99 is None else round(p99, 3),
    }
    if window.restarted:
        value["countingRestarted"] = True
    return value


#: Said of a window in which the data plane's counting started again (a new proxy that did
#: not take its predecessor's figures over): what came before the restart is not in it.
RESTARTED = "the data plane's counting restarted in this window: only what came after is judged"


def evaluate(
    analysis: Analysis, figures: VersionWindow, *, baseline: VersionWindow | None = None
) -> Measurement:
    """Judge one window of ``figures`` against ``analysis`` (see the module docstring); a
    window the data plane could not count whole says so (``countingRestarted``)."""
    judged = _judge(analysis, figures, baseline)
    if not figures.restarted:
        return judged
    return Measurement(judged.phase, judged.value, f"{judged.message} ({RESTARTED})")


def _judge(
    analysis: Analysis, figures: VersionWindow, baseline: VersionWindow | None
) -> Measurement:
    value: dict[str, object] = figures_value(figures)
    if baseline is not None:
        value["baseline"] = figures_value(baseline)
    if figures.requests < analysis.min_requests:
        return Measurement(
            MeasurementPhase.INCONCLUSIVE,
            value,
            f"only {figures.requests} requests to {figures.version} "
            f"(minRequests {analysis.min_requests}): not enough to judge",
        )
    problems: list[str] = []
    rate = figures.success_rate
    if analysis.success_rate is not None and rate is not None and rate < analysis.success_rate:
        problems.append(
            f"success rate {rate:.4f} below {analysis.success_rate:g} "
            f"({figures.errors_5xx} 5xx of {figures.requests})"
        )
    limit = analysis.max_latency_p99_seconds
    if limit is not None:
        p99 = figures.p99
        mean = figures.mean_ms
        if p99 is None and mean is not None and mean > limit * 1000.0:
            # No histogram sample in the window, only a data plane's average (HAProxy's
            # rtime, its request log lost): p99 >= mean, so a mean above the limit proves
            # the p99 is too. A mean below it proves nothing.
            problems.append(
                f"p99 latency at least {mean:.0f}ms (the mean: no latency samples in this"
                f" window) above {limit * 1000.0:g}ms"
            )
        elif p99 is None:
            if not problems:
                return Measurement(
                    MeasurementPhase.INCONCLUSIVE,
                    value,
                    f"no latency samples for {figures.version}: cannot judge maxLatencyP99",
                )
        elif p99 > limit * 1000.0:
            problems.append(f"p99 latency {p99:.0f}ms above {limit * 1000.0:g}ms")
    if problems:
        return Measurement(MeasurementPhase.FAILED, value, "; ".join(problems))
    parts = [f"{figures.requests} requests"]
    if rate is not None:
        parts.append(f"success rate {rate:.4f}")
    if figures.p99 is not None:
        parts.append(f"p99 {figures.p99:.0f}ms")
    if baseline is not None and baseline.success_rate is not None:
        parts.append(f"baseline success rate {baseline.success_rate:.4f}")
    return Measurement(MeasurementPhase.SUCCESSFUL, value, ", ".join(parts))


_SEVERITY = {
    MeasurementPhase.SUCCESSFUL: 0,
    MeasurementPhase.INCONCLUSIVE: 1,
    MeasurementPhase.ERROR: 2,
    MeasurementPhase.FAILED: 3,
}


def combine(*measurements: Measurement) -> Measurement:
    """The worst of several measurements of one analysis (built-in figures and Prometheus):
    failed over error over inconclusive over successful; values merged, messages joined."""
    if not measurements:
        raise ValueError("combine() needs at least one measurement")
    worst = max(measurements, key=lambda m: _SEVERITY[m.phase])
    value: dict[str, object] = {}
    for measurement in measurements:
        value.update(measurement.value)
    message = "; ".join(m.message for m in measurements if m.message)
    return Measurement(worst.phase, value, message)
