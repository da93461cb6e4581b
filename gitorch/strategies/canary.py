"""Canary: shift a share of the traffic to the new version step by step (Argo Rollouts).

One pure, idempotent pass (:func:`canary_step`) from the observed replicas, the step index
the store keeps (``RolloutInput.step``), when that step began (``step_started_at``), the
promote/abort requests and the status of the analysis runs it asked for.

Replicas. The canary runs ``needed(desired, w)`` = ceil(desired * w / 100) (at least 1 once
``w`` > 0) new replicas in slots 1..n, for the highest ``setWeight`` reached so far, beside
the full old (stable) set. With ``RolloutInput.stable`` given, crashed stable replicas are
recreated; replicas of any third template get no traffic and are stopped. ``desired`` is
the count of this pass and may move between passes (the autoscaler is not held by a
rollout): the stable set is filled and cut to it, the canary's slots above ``n`` stop.

Weights. ``Decision.weights = {new: w, stable: 100 - w}``, where ``w`` is the highest step
weight (0, the weights of the steps passed, the current ``setWeight``) that the *available*
new replicas can carry: a step's weight takes effect only once its replicas are ready
(50% is not sent to 1 replica when 2 of 4 are needed: the previous weight stays), and a
crashed canary replica lowers the weight to the previous step's at once.

Steps. ``setWeight`` completes when its replicas are available; ``pause: {duration}``
after the duration (PAUSED meanwhile); ``pause: {}`` on `gitorch promote` (PAUSED until
then); ``analysis`` when its run is successful. One step completes per pass (the reconciler
stores ``Decision.step`` and sets ``step_started_at``). `gitorch promote` completes the
current step whatever it is, once. A background ``analysis`` runs afresh at every step
whose weight is above 0 (key ``background-<step>``), so it measures the weight in effect.

Verdicts. A failed analysis (step or background) or `gitorch abort`: FAILED with the reason
and new weight 0 in the same decision (the reconciler rolls back). An inconclusive one:
PAUSED, saying so; it never passes on its own, only `gitorch promote` moves on.

Promotion, after the last step: new replicas in every slot; once all are available,
weight 100 and the old replicas are stopped (Stop drains them); then HEALTHY. With no old
replica alive and no stable template known (a first deploy), the canary goes straight to
promotion. The progress deadline counts only while new replicas are awaited, from the
later of ``last_progress_at`` and ``step_started_at`` (pauses and analyses do not count).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from gitorch.manifests.model import Analysis, Canary
from gitorch.strategies.machine import (
    Action,
    AnalysisRequest,
    Create,
    Decision,
    Phase,
    RolloutInput,
    Stop,
)
from gitorch.strategies.rolling import Census, take_census

RUNNING = "running"
SUCCESSFUL = "successful"
FAILED = "failed"
INCONCLUSIVE = "inconclusive"


# --- Helpers shared by the progressive strategies (canary, blue-green, A/B) -------------


def needed(desired: int, weight: int) -> int:
    """New replicas a weight needs: ceil(desired * weight / 100), at least 1 above 0."""
    if weight <= 0 or desired <= 0:
        return 0
    return min(desired, max(1, math.ceil(desired * weight / 100)))


def carried(desired: int, weights: Iterable[int], ready: int) -> int:
    """The highest of ``weights`` (and 0) that ``ready`` available new replicas carry."""
    return max((w for w in weights if needed(desired, w) <= ready), default=0)


def stable_template(inp: RolloutInput, census: Census) -> str | None:
    """The old version that keeps the rest of the traffic: ``inp.stable``, else the most
    common template among the live old replicas (ties: the smallest name)."""
    if inp.stable is not None and inp.stable != inp.target:
        return inp.stable
    counts = Counter(r.template for r in census.old)
    if not counts:
        return None
    return min(counts, key=lambda t: (-counts[t], t))


def available_new(census: Census) -> int:
    """Target replicas in slots 1..desired that are available now."""
    return sum(1 for r in census.targets.values() if r.id in census.available)


def all_new_available(inp: RolloutInput, census: Census) -> bool:
    return len(census.targets) == inp.desired and available_new(census) == inp.desired


def housekeeping(inp: RolloutInput, census: Census, stable: str | None) -> list[Action]:
    """Stops every pass makes: exited replicas, excess new ones, old ones of a third
    template (they get no weight, so they serve nobody), and, when the stable template is
    known for certain, stable replicas above the desired count (the count fell during
    the rollout, the autoscaler's or Git's: the stable set follows it, as
    :func:`keep_stable` follows a rise)."""
    stops: list[Action] = [Stop(r.id, "exited") for r in census.exited]
    stops += [Stop(r.id, "scale down or second replica in slot") for r in census.excess]
    stops += [Stop(r.id, "neither stable nor target") for r in census.old if r.template != stable]
    if inp.stable is not None and inp.stable != inp.target:
        stops += [
            Stop(r.id, "scale down")
            for r in census.old
            if r.template == inp.stable and r.slot > inp.desired
        ]
    return stops


def keep_stable(inp: RolloutInput, census: Census) -> list[Action]:
    """Recreate missing stable replicas (slots 1..desired), only when the stable template
    is known for certain (``inp.stable``): a guessed one is never recreated; one whose
    slot is in the stable set's crash-loop back-off waits it out."""
    if inp.stable is None or inp.stable == inp.target:
        return []
    held = {r.slot for r in census.old if r.template == inp.stable}
    return [
        Create(slot, inp.stable)
        for slot in range(1, inp.desired + 1)
        if slot not in held and slot not in inp.blocked_stable_slots
    ]


def create_new(inp: RolloutInput, census: Census, count: int) -> list[Action]:
    """Creates filling new-version slots 1..count that have no live target replica."""
    return [
        Create(slot, inp.target)
        for slot in range(1, min(count, inp.desired) + 1)
        if slot not in census.targets and slot not in inp.blocked_slots
    ]


def split(inp: RolloutInput, stable: str | None, weight: int) -> dict[str, int]:
    """``{target: weight, stable: 100 - weight}`` (just the target without a stable)."""
    if stable is None:
        return {inp.target: weight}
    return {inp.target: weight, stable: 100 - weight}


def analysis_status(inp: RolloutInput, key: str) -> tuple[str, str]:
    """(phase, message) of the run under ``key``; not reported yet counts as running."""
    status = inp.analyses.get(key)
    if status is None:
        return RUNNING, ""
    return status.phase, status.message


def request(inp: RolloutInput, key: str, analysis: Analysis, stable: str | None) -> AnalysisRequest:
    return AnalysisRequest(key, analysis, inp.target, stable)


def fail(
    inp: RolloutInput,
    stable: str | None,
    reason: str,
    actions: Iterable[Action] = (),
    step: int | None = None,
) -> Decision:
    """FAILED: the new version gets weight 0 in this very decision; rollback is the
    reconciler's."""
    return Decision(
        Phase.FAILED,
        ordered(a for a in actions if isinstance(a, Stop)),  # housekeeping only
        reason,
        step=step,
        failure=reason,
        weights=split(inp, stable, 0),
    )


def step_start(inp: RolloutInput) -> float:
    """When the current step began (``started_at`` when the reconciler gave no time)."""
    return inp.started_at if inp.step_started_at is None else inp.step_started_at


def finished(inp: RolloutInput, last_stage: bool) -> bool:
    """May a pass whose census is done (only new replicas, all available) say HEALTHY?

    Not while the stable version is known (``inp.stable``) and the rollout has not reached
    its last stage: every old replica crashing at once must not promote an unfinished
    canary or A/B test; their replicas are recreated instead.
    """
    return inp.stable is None or inp.stable == inp.target or last_stage


def stalled_for(inp: RolloutInput) -> float:
    """Seconds without progress, pauses and analyses excluded (see module docstring)."""
    since = max(inp.last_progress_at, step_start(inp), inp.watching_since)
    return inp.now - since


def deadline_failure(inp: RolloutInput, waiting_for: str) -> str | None:
    stalled = stalled_for(inp)
    if stalled > inp.progress_deadline_seconds:
        return (
            f"progress deadline exceeded: {waiting_for} for {stalled:.0f}s "
            f"(progressDeadlineSeconds {inp.progress_deadline_seconds:g})"
        )
    return None


def healthy(inp: RolloutInput, actions: Iterable[Action], step: int | None) -> Decision:
    return Decision(
        Phase.HEALTHY,
        tuple(actions),
        f"{inp.desired}/{inp.desired} updated",
        step=step,
        weights={inp.target: 100},
    )


def promote(
    inp: RolloutInput,
    census: Census,
    stable: str | None,
    *,
    weights: Iterable[int],
    actions: list[Action],
    step: int | None,
    label: str,
) -> Decision:
    """Full promotion: new replicas in every slot; once all are available, weight 100 and
    the old replicas stopped; before that the highest of ``weights`` the ready ones carry."""
    actions = actions + create_new(inp, census, inp.desired)
    ready = available_new(census)
    if all_new_available(inp, census):
        stopping = {a.replica_id for a in actions if isinstance(a, Stop)}
        actions = [
            *[a for a in actions if isinstance(a, Stop)],
            *[Stop(r.id, "promoted: old version") for r in census.old if r.id not in stopping],
            *[a for a in actions if isinstance(a, Create)],
        ]
        message = f"{label}: {ready}/{inp.desired} new available, all traffic to the new version"
        return Decision(
            Phase.PROGRESSING, ordered(actions), message, step=step, weights={inp.target: 100}
        )
    weight = carried(inp.desired, weights, ready)
    message = f"{label}: {ready}/{inp.desired} new available, weight {weight}%"
    failure = deadline_failure(inp, f"{ready}/{inp.desired} new replicas available")
    if failure is not None:
        return fail(inp, stable, failure, actions, step)
    return Decision(
        Phase.PROGRESSING,
        ordered(actions),
        message,
        step=step,
        weights=split(inp, stable, weight),
    )


def ordered(actions: Iterable[Action]) -> tuple[Action, ...]:
    """Stops before Creates (the executor's order), each kept once."""
    unique = list(dict.fromkeys(actions))
    return tuple(sorted(unique, key=lambda a: isinstance(a, Create)))


# --- Canary -------------------------------------------------------------------------------


def _step_weights(spec: Canary, upto: int) -> list[int]:
    """0 and the setWeight values of steps 0..upto-1."""
    return [0] + [s.set_weight for s in spec.steps[:upto] if s.set_weight is not None]


def canary_step(inp: RolloutInput, spec: Canary) -> Decision:
    """One pass of a Canary rollout; pure and idempotent (see the module docstring)."""
    census = take_census(inp)
    stable = stable_template(inp, census)
    steps = spec.steps
    total = len(steps)
    actions = housekeeping(inp, census, stable)
    index = min(max(inp.step or 0, 0), total)
    if census.done(inp.desired) and finished(inp, index >= total):
        return healthy(inp, ordered(actions), total)
    if inp.abort_requested:
        return fail(inp, stable, "aborted by `gitorch abort`", actions, inp.step)
    if stable is None or index >= total:
        label = "promoting" if stable is not None else "first deploy"
        return promote(
            inp,
            census,
            stable,
            weights=[*_step_weights(spec, total), 100],
            actions=actions,
            step=total,
            label=label,
        )

    step = steps[index]
    where = f"step {index + 1}/{total} ({step.describe()})"
    scale_weight = max(_step_weights(spec, index + 1))
    size = needed(inp.desired, scale_weight)
    # The count fell mid-rollout: the canary shrinks with it (its highest slots first).
    shrink = [r for slot, r in census.targets.items() if slot > size]
    actions += [Stop(r.id, "canary scale down") for r in shrink]
    actions += keep_stable(inp, census) + create_new(inp, census, size)
    ready = available_new(census) - sum(1 for r in shrink if r.id in census.available)
    weight = carried(inp.desired, _step_weights(spec, index + 1), ready)
    weights = split(inp, stable, weight)
    requests: list[AnalysisRequest] = []
    summary = f"canary {where}: weight {weight}%, {ready}/{size} canary available"

    def decide(phase: Phase, note: str, advance: bool = False) -> Decision:
        return Decision(
            phase,
            ordered(actions),
            f"{summary}; {note}",
            step=index + 1 if advance else index,
            weights=weights,
            analyses=tuple(requests),
        )

    if spec.analysis is not None and weight > 0:
        key = f"background-{index}"
        requests.append(request(inp, key, spec.analysis, stable))
        phase, message = analysis_status(inp, key)
        if phase == FAILED:
            return fail(inp, stable, f"background analysis failed: {message}", actions, index)
        if phase == INCONCLUSIVE and not inp.promote_requested:
            return decide(
                Phase.PAUSED,
                f"background analysis inconclusive ({message}); `gitorch promote` to go on",
            )

    if inp.promote_requested:
        return decide(Phase.PROGRESSING, "promoted by `gitorch promote`", advance=True)

    if step.set_weight is not None:
        want = needed(inp.desired, step.set_weight)
        if ready >= want:
            return decide(Phase.PROGRESSING, f"weight {step.set_weight}% reached", advance=True)
        failure = deadline_failure(inp, f"{ready}/{want} canary replicas available")
        if failure is not None:
            return fail(inp, stable, failure, actions, index)
        return decide(Phase.PROGRESSING, f"waiting for {want - ready} canary replicas ready")

    if step.is_pause:
        if step.pause_seconds is None:
            return decide(Phase.PAUSED, f"waiting for `gitorch promote {inp.service}`")
        elapsed = inp.now - step_start(inp)
        if elapsed >= step.pause_seconds:
            return decide(Phase.PROGRESSING, "pause over", advance=True)
        return decide(Phase.PAUSED, f"paused, {step.pause_seconds - elapsed:.0f}s left")

    assert step.analysis is not None  # the model guarantees exactly one kind per step
    key = f"step-{index}"
    requests.append(request(inp, key, step.analysis, stable))
    phase, message = analysis_status(inp, key)
    if phase == FAILED:
        return fail(inp, stable, f"analysis failed: {message}", actions, index)
    if phase == INCONCLUSIVE:
        return decide(
            Phase.PAUSED, f"analysis inconclusive ({message}); `gitorch promote` to go on"
        )
    if phase == SUCCESSFUL:
        return decide(Phase.PROGRESSING, f"analysis successful ({message})", advance=True)
    return decide(Phase.PROGRESSING, f"analysis running {message}".rstrip())


def analysis_label(key: str) -> str:
    """An analysis run's key as people read it: the keys count a canary's steps from 0
    (``step-2``, ``background-2``: stored, so kept), the progress line from 1 (``canary
    step 3/6``); ``step 3``, ``background at step 3``. Other keys are their own label."""
    kind, _, number = key.partition("-")
    if not number.isdigit():
        return key
    if kind == "step":
        return f"step {int(number) + 1}"
    if kind == "background":
        return f"background at step {int(number) + 1}"
    return key
