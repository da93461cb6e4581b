"""BlueGreen: the new colour at full size beside the old, then all traffic at once.

One pure, idempotent pass (:func:`bluegreen_step`). The step index says where it stands:

- step 0, before the switch: the new colour is started in every slot 1..desired; the
  stable (old) colour keeps 100% of the traffic on the service port while
  ``Decision.preview`` names the new colour for ``blueGreen.previewPort``. Once every new
  replica is available (``last_progress_at`` is then when the last one became so), the
  ``prePromotionAnalysis`` (key ``pre-promotion``, baseline the old colour) runs; after it
  succeeds the switch happens on `gitorch promote` or ``autoPromotionSeconds`` after the
  colour became ready. The switch never happens before the whole new colour is available,
  promote or not. A failed analysis or `gitorch abort`: FAILED, new weight 0; inconclusive:
  PAUSED until `gitorch promote`.
- step 1, switched (``step_started_at`` = the switch): weights new 100 / old 0, the preview
  route closed. The old colour stays ``scaleDownDelaySeconds`` for a fast way back:
  `gitorch abort` in that window gives it all traffic again in the same decision (FAILED;
  the reconciler then rolls back). After the delay the old replicas are stopped; HEALTHY
  once only the new colour is left. Once healthy, an abort changes nothing here.

With no old replica alive and no stable template known (a first deploy) the new colour
simply starts with all the traffic. The progress deadline applies while the new colour is
awaited.
"""

from __future__ import annotations

from gitorch.manifests.model import BlueGreen
from gitorch.strategies.canary import (
    FAILED,
    INCONCLUSIVE,
    RUNNING,
    all_new_available,
    analysis_status,
    available_new,
    create_new,
    deadline_failure,
    fail,
    finished,
    healthy,
    housekeeping,
    keep_stable,
    ordered,
    promote,
    request,
    split,
    stable_template,
    step_start,
)
from gitorch.strategies.machine import AnalysisRequest, Decision, Phase, RolloutInput, Stop
from gitorch.strategies.rolling import take_census

BEFORE_SWITCH = 0
SWITCHED = 1


def bluegreen_step(inp: RolloutInput, spec: BlueGreen) -> Decision:
    """One pass of a BlueGreen rollout; pure and idempotent (see the module docstring)."""
    census = take_census(inp)
    stable = stable_template(inp, census)
    actions = housekeeping(inp, census, stable)
    index = inp.step or BEFORE_SWITCH
    if census.done(inp.desired) and finished(inp, index >= SWITCHED):
        return healthy(inp, actions, SWITCHED)
    if stable is None:
        return promote(
            inp, census, None, weights=[100], actions=actions, step=SWITCHED, label="first deploy"
        )
    ready = available_new(census)

    if index >= SWITCHED:
        if inp.abort_requested:
            return fail(
                inp,
                stable,
                "aborted by `gitorch abort`: traffic back to the old colour",
                actions,
                SWITCHED,
            )
        actions += create_new(inp, census, inp.desired)
        kept = inp.now - step_start(inp)
        left = spec.scale_down_delay_seconds - kept
        if left <= 0:
            stopping = {a.replica_id for a in actions if isinstance(a, Stop)}
            actions += [
                Stop(r.id, "old colour after scaleDownDelaySeconds")
                for r in census.old
                if r.id not in stopping
            ]
            note = "stopping the old colour"
        else:
            note = f"old colour kept {left:.0f}s more for a fast rollback"
        return Decision(
            Phase.PROGRESSING,
            ordered(actions),
            f"switched: all traffic to the new colour ({ready}/{inp.desired} available); {note}",
            step=SWITCHED,
            weights=split(inp, stable, 100),
        )

    if inp.abort_requested:
        return fail(inp, stable, "aborted by `gitorch abort`", actions, BEFORE_SWITCH)
    actions += keep_stable(inp, census) + create_new(inp, census, inp.desired)
    requests: list[AnalysisRequest] = []

    def hold(phase: Phase, note: str) -> Decision:
        return Decision(
            phase,
            ordered(actions),
            f"new colour {ready}/{inp.desired} available at the preview port; {note}",
            step=BEFORE_SWITCH,
            weights=split(inp, stable, 0),
            preview=inp.target,
            analyses=tuple(requests),
        )

    if not all_new_available(inp, census):
        failure = deadline_failure(inp, f"{ready}/{inp.desired} of the new colour available")
        if failure is not None:
            return fail(inp, stable, failure, actions, BEFORE_SWITCH)
        return hold(Phase.PROGRESSING, "waiting for the whole new colour to be ready")

    if spec.pre_promotion_analysis is not None:
        key = "pre-promotion"
        requests.append(request(inp, key, spec.pre_promotion_analysis, stable))
        phase, message = analysis_status(inp, key)
        if phase == FAILED:
            return fail(
                inp, stable, f"pre-promotion analysis failed: {message}", actions, BEFORE_SWITCH
            )
        if phase == INCONCLUSIVE and not inp.promote_requested:
            return hold(
                Phase.PAUSED,
                f"pre-promotion analysis inconclusive ({message}); `gitorch promote` to switch",
            )
        if phase == RUNNING:
            return hold(Phase.PROGRESSING, f"pre-promotion analysis running {message}".rstrip())

    auto = spec.auto_promotion_seconds
    ready_for = inp.now - inp.last_progress_at
    if inp.promote_requested or (auto is not None and ready_for >= auto):
        why = "`gitorch promote`" if inp.promote_requested else f"autoPromotionSeconds {auto}"
        return Decision(
            Phase.PROGRESSING,
            ordered(actions),
            f"switching all traffic to the new colour ({why})",
            step=SWITCHED,
            weights=split(inp, stable, 100),
            analyses=tuple(requests),
        )
    if auto is None:
        return hold(Phase.PAUSED, f"waiting for `gitorch promote {inp.service}` to switch")
    return hold(Phase.PAUSED, f"switching in {auto - ready_for:.0f}s (autoPromotionSeconds)")
