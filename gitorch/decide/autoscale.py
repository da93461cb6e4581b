"""The horizontal autoscaler's decision: pure.

:func:`decide_scale` is the Kubernetes HPA algorithm (autoscaling/v2) over the readings
the daemon's sync loop took, the service's ``spec.autoscale`` and what the autoscaler
remembers (:class:`ScaleMemory`: recent recommendations and scale events). Nothing here
reads a clock, a store or a runtime.

* Per metric: ``ratio = value / target``; within the tolerance (0.1) of 1, no change;
  otherwise ``ceil(ratio × replicas measured)``. Replicas that gave no reading count, as
  in Kubernetes, as 0 on a scale-up and as the target on a scale-down; if that turns the
  direction round (or into the tolerance), the count stays.
* The highest proposal across metrics wins. A metric that could not be read never lets
  the others scale *down* (they may still scale up); with no reading at all, nothing moves.
* Stabilization: the count goes no lower than the highest proposal of the scale-down
  window (default 300 s) and no higher than the lowest of the scale-up window (default 0).
* Rate: ``behavior`` policies (Pods or Percent per period, ``selectPolicy`` Max, Min or
  Disabled) limit how far one decision moves from the count at the start of each period.
* Bounds: always within ``minReplicas..maxReplicas``, even with no reading.
* Not paused by a rollout (Kubernetes' HPA scales a Deployment mid-rollout, Argo
  Rollouts a canary): every strategy works from the count of the pass, so a rolling
  update keeps its limits against the new count, a canary's stable set and share follow
  it (``tests/strategies/test_count_mid_rollout.py``). The readings span every version
  running; averaged per replica, a surge's extra replicas do not move the proposal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gitorch.manifests.model import Autoscale, ScalingRules

#: Ratios within this distance of 1 change nothing (Kubernetes' default).
TOLERANCE = 0.1
#: Recommendations and events older than this are of no use to any window or policy.
MEMORY_SECONDS = 3600.0


@dataclass(frozen=True)
class MetricReading:
    """One metric as the sync loop read it.

    ``value`` is in the metric's own unit (utilization percent of requests, requests per
    second per replica, p99 milliseconds, the query's value); None when it could not be
    read (``message`` says why). ``measured`` is the number of replicas it was averaged
    over (for per-replica metrics; the whole service's for latency and prometheus).
    """

    metric: str  # cpu | memory | rps | latency | prometheus
    target: float
    value: float | None
    measured: int = 0
    message: str = ""


@dataclass(frozen=True)
class MetricVerdict:
    """What one metric proposes (None: it could not be read)."""

    metric: str
    value: float | None
    target: float
    proposal: int | None
    message: str = ""

    def describe(self) -> str:
        if self.value is None:
            return f"{self.metric}: not measured ({self.message or 'no reading'})"
        return f"{self.metric} {_num(self.value)}/{_num(self.target)} -> {self.proposal}"


@dataclass(frozen=True)
class ScaleMemory:
    """What the autoscaler remembers between decisions: the unstabilized recommendations
    ``(at, count)`` and the scale events ``(at, change)`` of the last hour."""

    recommendations: tuple[tuple[float, int], ...] = ()
    events: tuple[tuple[float, int], ...] = ()

    def trimmed(self, now: float) -> ScaleMemory:
        cutoff = now - MEMORY_SECONDS
        return ScaleMemory(
            tuple(r for r in self.recommendations if r[0] > cutoff),
            tuple(e for e in self.events if e[0] > cutoff),
        )


@dataclass(frozen=True)
class ScaleInput:
    """Everything :func:`decide_scale` may look at."""

    service: str
    spec: Autoscale
    current: int  # the count the service is set to run now
    readings: tuple[MetricReading, ...]
    now: float
    memory: ScaleMemory = ScaleMemory()


@dataclass(frozen=True)
class ScaleDecision:
    """The count to run, why, and what to remember."""

    service: str
    current: int
    desired: int
    reason: str
    verdicts: tuple[MetricVerdict, ...]
    memory: ScaleMemory
    recommendation: int  # before stabilization and rate limits

    @property
    def changed(self) -> bool:
        return self.desired != self.current

    @property
    def deciding(self) -> MetricVerdict | None:
        """The metric whose proposal was taken (the highest), if any was read."""
        read = [v for v in self.verdicts if v.proposal is not None]
        return max(read, key=lambda v: v.proposal or 0) if read else None


def _num(value: float) -> str:
    return f"{value:.0f}" if value == int(value) or abs(value) >= 100 else f"{value:.2f}"


def metric_proposal(reading: MetricReading, current: int) -> int | None:
    """The count one metric asks for (None when it gave no reading)."""
    if reading.value is None or reading.target <= 0:
        return None
    measured = reading.measured if reading.measured > 0 else current
    ratio = reading.value / reading.target
    if abs(ratio - 1.0) <= TOLERANCE:
        return current
    proposal = math.ceil(ratio * measured)
    missing = current - measured
    if missing > 0:
        # Kubernetes: replicas without a reading count as idle on a scale-up and as
        # exactly on target on a scale-down, then the direction is checked again.
        if ratio > 1.0:
            adjusted = reading.value * measured / current / reading.target
        else:
            adjusted = (reading.value * measured + reading.target * missing) / current
            adjusted /= reading.target
        if abs(adjusted - 1.0) <= TOLERANCE or (adjusted > 1.0) != (ratio > 1.0):
            return current
        proposal = math.ceil(adjusted * current)
    return proposal


def _stabilized(
    spec: Autoscale, memory: ScaleMemory, current: int, proposal: int, now: float
) -> int:
    """The proposal held within the highest of the scale-down window and the lowest of
    the scale-up window (``stabilizeRecommendationWithBehaviors``)."""
    up_cutoff = now - spec.scale_up.stabilization_seconds
    down_cutoff = now - spec.scale_down.stabilization_seconds
    up, down = proposal, proposal
    for at, count in memory.recommendations:
        if at > up_cutoff:
            up = min(up, count)
        if at > down_cutoff:
            down = max(down, count)
    result = current
    if result < up:
        result = up
    if result > down:
        result = down
    return result


def _rate_limited(
    rules: ScalingRules, memory: ScaleMemory, current: int, want: int, now: float
) -> int:
    """``want`` within what ``rules``' policies allow from ``current``
    (``convertDesiredReplicasWithBehaviorRate``)."""
    if rules.select_policy == "Disabled":
        return current
    up = want > current
    limits: list[int] = []
    for policy in rules.policies:
        cutoff = now - policy.period_seconds
        moved = sum(change for at, change in memory.events if at > cutoff)
        if up:
            start = current - max(0, moved)  # the count at the period's start
            if policy.type == "Pods":
                limits.append(start + policy.value)
            else:
                limits.append(math.ceil(start * (1 + policy.value / 100)))
        else:
            start = current - min(0, moved)
            if policy.type == "Pods":
                limits.append(start - policy.value)
            else:
                limits.append(math.floor(start * (1 - policy.value / 100)))
    if not limits:
        return want
    # "Max" picks the policy that allows the largest change, "Min" the smallest.
    if up:
        limit = max(limits) if rules.select_policy == "Max" else min(limits)
        return min(want, limit)
    limit = min(limits) if rules.select_policy == "Max" else max(limits)
    return max(want, limit)


def decide_scale(inp: ScaleInput) -> ScaleDecision:
    """The count ``inp.service`` should run (see the module docstring)."""
    spec, current, now = inp.spec, inp.current, inp.now
    low, high = spec.min_replicas, spec.max_replicas
    verdicts = tuple(
        MetricVerdict(r.metric, r.value, r.target, metric_proposal(r, current), r.message)
        for r in inp.readings
    )
    memory = inp.memory.trimmed(now)
    proposals = [v.proposal for v in verdicts if v.proposal is not None]
    missing = [v.metric for v in verdicts if v.proposal is None]

    def done(desired: int, reason: str, recommendation: int) -> ScaleDecision:
        events = memory.events
        if desired != current:
            events = (*events, (now, desired - current))
        return ScaleDecision(
            inp.service,
            current,
            desired,
            reason,
            verdicts,
            ScaleMemory(memory.recommendations, events),
            recommendation,
        )

    bounded = min(max(current, low), high)
    if not inp.readings:
        return done(bounded, f"no horizontal metric: the count stays within {low}..{high}", current)
    if not proposals:
        why = "no metric could be read: the count stays"
        if bounded != current:
            why = f"no metric could be read; held within bounds {low}..{high}"
        return done(bounded, why, current)

    proposal = max(proposals)
    deciding = next(v for v in verdicts if v.proposal == proposal)
    reason = deciding.describe()
    if missing and proposal < current:
        proposal = current
        reason = f"{', '.join(missing)} not measured: no scale-down"
    memory = ScaleMemory((*memory.recommendations, (now, proposal)), memory.events)
    stabilized = _stabilized(spec, inp.memory.trimmed(now), current, proposal, now)
    if stabilized != proposal:
        window = (
            spec.scale_down.stabilization_seconds
            if proposal < current
            else spec.scale_up.stabilization_seconds
        )
        reason += f"; stabilized at {stabilized} (highest recommendation in {window}s)"
        if proposal > current:
            reason = reason.replace("highest", "lowest")
    desired = stabilized
    if desired > current:
        limited = _rate_limited(spec.scale_up, memory, current, desired, now)
    elif desired < current:
        limited = _rate_limited(spec.scale_down, memory, current, desired, now)
    else:
        limited = desired
    if limited != desired:
        reason += f"; limited to {limited} by the behavior policies"
    desired = limited
    clamped = min(max(desired, low), high)
    if clamped != desired:
        reason += f"; held within bounds {low}..{high}"
    return done(clamped, reason, proposal)
