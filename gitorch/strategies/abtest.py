"""ABTest: a segment of the users (by header or cookie) sees the new version for a while.

One pure, idempotent pass (:func:`abtest_step`); the step index says where it stands:

- step 0: the new version is started at full size (every slot 1..desired: the segment's
  share of the traffic is unknown) beside the stable one, which keeps 100% of the weights.
  Once every new replica is available the test starts (step 1);
- step 1, the test (``step_started_at`` = its start): ``Decision.match`` carries the
  rules, so matching requests go to the new version; everything else stays on the stable
  one, whose weight stays 100 (weights never send non-matching traffic to the new
  version). The analysis (key ``abtest``, baseline the stable version: both versions'
  figures are reported) runs meanwhile. After ``duration`` (or on `gitorch promote`) with
  the analysis successful (or none) the test is concluded (step 2). Failed analysis or
  `gitorch abort`: FAILED, rules off, new weight 0; inconclusive: PAUSED until promote;
- step 2, concluded: with ``promote: true`` like the canary's promotion (weight 100 once
  every new replica is available, rules off, the old version stopped, then HEALTHY); with
  ``promote: false`` HEALTHY with both versions running and the rules kept: the segment
  stays on the new version until the next commit decides (an experiment left running is a
  choice, not a failure). Missing replicas of both versions are recreated then.

With no old replica alive and no stable template known (a first deploy), the new version
simply starts with all the traffic.
"""

from __future__ import annotations

from gitorch.manifests.model import ABTest
from gitorch.strategies.canary import (
    FAILED,
    INCONCLUSIVE,
    RUNNING,
    SUCCESSFUL,
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
from gitorch.strategies.machine import AnalysisRequest, Decision, Phase, RolloutInput
from gitorch.strategies.rolling import take_census

STARTING = 0
TESTING = 1
CONCLUDED = 2


def abtest_step(inp: RolloutInput, spec: ABTest) -> Decision:
    """One pass of an A/B test rollout; pure and idempotent (see the module docstring)."""
    census = take_census(inp)
    stable = stable_template(inp, census)
    actions = housekeeping(inp, census, stable)
    index = min(inp.step or STARTING, CONCLUDED)
    if census.done(inp.desired) and finished(inp, index == CONCLUDED and spec.promote):
        return healthy(inp, actions, CONCLUDED)
    if stable is None:
        return promote(
            inp, census, None, weights=[100], actions=actions, step=CONCLUDED, label="first deploy"
        )
    if inp.abort_requested and not (index == CONCLUDED and not spec.promote):
        return fail(inp, stable, "aborted by `gitorch abort`", actions, index)
    if index == CONCLUDED and spec.promote:
        return promote(
            inp,
            census,
            stable,
            weights=[0, 100],
            actions=actions,
            step=CONCLUDED,
            label="A/B test concluded, promoting",
        )

    actions += keep_stable(inp, census) + create_new(inp, census, inp.desired)
    ready = available_new(census)
    requests: list[AnalysisRequest] = []

    def decide(phase: Phase, note: str, step: int, rules: bool = True) -> Decision:
        return Decision(
            phase,
            ordered(actions),
            f"A/B: {ready}/{inp.desired} new available; {note}",
            step=step,
            weights=split(inp, stable, 0),
            match=spec.match if rules else (),
            analyses=tuple(requests),
        )

    if index == CONCLUDED:  # promote: false
        return Decision(
            Phase.HEALTHY,
            ordered(actions),
            f"A/B test concluded, both versions kept (promote: false): requests matching the "
            f"rules go to the new version ({ready}/{inp.desired} available)",
            step=CONCLUDED,
            weights=split(inp, stable, 0),
            match=spec.match,
        )

    if index == STARTING:
        if all_new_available(inp, census):
            return decide(
                Phase.PROGRESSING, "test starts: matching requests to the new version", TESTING
            )
        failure = deadline_failure(inp, f"{ready}/{inp.desired} new replicas available")
        if failure is not None:
            return fail(inp, stable, failure, actions, STARTING)
        return decide(
            Phase.PROGRESSING, "waiting for the new version to be ready", STARTING, rules=False
        )

    elapsed = inp.now - step_start(inp)
    phase, message = SUCCESSFUL, ""
    if spec.analysis is not None:
        requests.append(request(inp, "abtest", spec.analysis, stable))
        phase, message = analysis_status(inp, "abtest")
        if phase == FAILED:
            return fail(inp, stable, f"A/B analysis failed: {message}", actions, TESTING)
        if phase == INCONCLUSIVE and not inp.promote_requested:
            # Said at once, not at the end of the test: it cannot pass any more.
            return decide(
                Phase.PAUSED,
                f"analysis inconclusive ({message}); `gitorch promote` to conclude",
                TESTING,
            )
    over = elapsed >= spec.duration_seconds
    if not (over or inp.promote_requested):
        left = spec.duration_seconds - elapsed
        return decide(Phase.PROGRESSING, f"test running, {left:.0f}s left", TESTING)
    if inp.promote_requested or phase == SUCCESSFUL:
        return decide(Phase.PROGRESSING, "test concluded", CONCLUDED)
    assert phase == RUNNING
    return decide(
        Phase.PROGRESSING, f"test time over, analysis running {message}".rstrip(), TESTING
    )
