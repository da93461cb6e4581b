"""What a rollout will do, step by step, in words: the preview ``gitorch plan`` shows.

Pure functions of the new spec and how many old replicas run. The rolling batches come
from :func:`gitorch.strategies.rolling.plan_batches`, the same arithmetic the rollout uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitorch.manifests.model import Analysis, Service
from gitorch.manifests.quantities import format_duration
from gitorch.strategies.rolling import plan_batches, resolve_limits, single_writer_limits


@dataclass(frozen=True)
class RolloutPreview:
    strategy: str
    steps: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {"strategy": self.strategy, "steps": list(self.steps)}


def describe_analysis(analysis: Analysis) -> str:
    checks = []
    if analysis.success_rate is not None:
        checks.append(f"success rate >= {analysis.success_rate:g}")
    if analysis.max_latency_p99_seconds is not None:
        checks.append(f"p99 <= {format_duration(analysis.max_latency_p99_seconds)}")
    if analysis.prometheus is not None:
        checks.append(f"prometheus {analysis.prometheus.success_condition}")
    what = ", ".join(checks) or "no checks"
    return (
        f"analysis: {what}; {analysis.count} measurements every {format_duration(analysis.interval_seconds)}, "
        f"at least {analysis.min_requests} requests each, {analysis.failure_limit} failures tolerated"
    )


def _replicas(count: int, adjective: str) -> str:
    """``2 new replicas``, ``1 new replica``."""
    return f"{count} {adjective} replica{'s' if count != 1 else ''}"


def preview_create(service: Service) -> RolloutPreview:
    steps = [f"start {service.replicas} replica{'s' if service.replicas != 1 else ''}"]
    if service.readiness_probe is not None:
        steps.append("wait until every replica passes its readiness probe")
    if service.expose is not None:
        steps.append(
            f"serve :{service.expose.port} ({service.expose.protocol}) from ready replicas"
        )
    return RolloutPreview("Create", tuple(steps))


def preview_delete(name: str, running: int) -> RolloutPreview:
    return RolloutPreview(
        "Delete",
        (
            f"deregister from the load balancer, drain, then stop and remove {running} replica{'s' if running != 1 else ''}",
        ),
    )


def preview_scale(old: int, new: int) -> RolloutPreview:
    verb = f"start {new - old}" if new > old else f"drain and stop {old - new}"
    return RolloutPreview("Scale", (f"scale {old} -> {new} replicas ({verb})",))


def preview_update(
    service: Service, old_replicas: int, single_writer: tuple[str, ...] = ()
) -> RolloutPreview:
    """Steps for replacing ``old_replicas`` running replicas by the new spec's replicas.
    ``single_writer``: the ReadWriteOnce volumes the service writes (a RollingUpdate then
    runs as maxSurge 0: the old replica stops before the new one starts)."""
    strategy = service.strategy
    desired = service.replicas
    kind = strategy.type
    steps: list[str] = []
    if kind == "Recreate":
        stop = (
            f"stop all {old_replicas} old replicas" if old_replicas != 1 else "stop the old replica"
        )
        steps = [stop, f"start {_replicas(desired, 'new')}"]
    elif kind == "RollingUpdate":
        rolling = strategy.rolling_update
        max_surge, max_unavailable = rolling.max_surge, rolling.max_unavailable
        why = ""
        if single_writer:
            max_surge, max_unavailable = single_writer_limits(service, desired)
            volumes = ", ".join(single_writer)
            why = f" (ReadWriteOnce volume {volumes}: one writer at a time)"
        surge, unavailable = resolve_limits(desired, max_surge, max_unavailable)
        # With a surge, a replica stopped to make room is terminating (out of the
        # rotation) while the new one starts: the bound is of replicas in service.
        counted = "replicas in service" if surge else "replicas"
        steps.append(
            f"maxSurge {surge}, maxUnavailable {unavailable}{why}: at most {desired + surge} {counted}, at least {max(0, desired - unavailable)} available"
        )
        for index, batch in enumerate(
            plan_batches(desired, old_replicas, max_surge, max_unavailable), 1
        ):
            parts = []
            if batch.stop_first:
                parts.append(f"stop {batch.stop_first} old")
            if batch.start:
                parts.append(f"start {batch.start} new")
            if batch.stop - batch.stop_first:
                parts.append(f"stop {batch.stop - batch.stop_first} old")
            steps.append(f"batch {index}: " + ", then ".join(parts))
    elif kind == "BlueGreen":
        blue = strategy.blue_green
        assert blue is not None
        preview = f", reachable at :{blue.preview_port}" if blue.preview_port else ""
        old_ones = "the old one" if old_replicas == 1 else f"the {old_replicas} old ones"
        steps.append(f"start {_replicas(desired, 'new')} beside {old_ones}{preview}")
        if blue.pre_promotion_analysis is not None:
            steps.append("pre-promotion " + describe_analysis(blue.pre_promotion_analysis))
        when = (
            f"after {blue.auto_promotion_seconds}s"
            if blue.auto_promotion_seconds is not None
            else "on `gitorch promote`"
        )
        steps.append(f"promote {when}: switch all traffic to the new replicas at once")
        steps.append(
            f"keep the old replicas {blue.scale_down_delay_seconds}s for instant abort, then stop them"
        )
    elif kind == "Canary":
        canary = strategy.canary
        assert canary is not None
        steps.append("start canary replicas beside the old ones (weight 0)")
        if canary.analysis is not None:
            steps.append("background " + describe_analysis(canary.analysis))
        for step in canary.steps:
            steps.append(
                describe_analysis(step.analysis) if step.analysis is not None else step.describe()
            )
        steps.append(f"promote: scale new to {desired} replicas, weight 100%, stop the old ones")
    elif kind == "ABTest":
        ab = strategy.ab_test
        assert ab is not None
        rules = ", ".join(
            f"{'header' if r.header else 'cookie'} {r.header or r.cookie}"
            + (f" = {r.exact}" if r.exact is not None else f" ~ /{r.regex}/")
            for r in ab.match
        )
        steps.append("start the new version beside the old one")
        steps.append(
            f"route requests matching {rules} to the new version for {format_duration(ab.duration_seconds)}"
        )
        if ab.analysis is not None:
            steps.append("compare versions: " + describe_analysis(ab.analysis))
        steps.append(
            "then promote the new version" if ab.promote else "then keep both (no promotion)"
        )
    if strategy.auto_rollback:
        steps.append(
            f"on failure (deadline {strategy.progress_deadline_seconds}s): roll back automatically"
        )
    return RolloutPreview(kind, tuple(steps))
