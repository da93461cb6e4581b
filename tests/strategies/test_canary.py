"""Canary: table-driven passes and random simulations on the simulated cluster."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategy_sim import (
    Cluster,
    ProgressiveReconciler,
    check_cluster,
    check_progressive_pass,
    needed_for,
    new_weight,
    rollout_input,
)

from gitorch.manifests.model import Analysis, Canary, CanaryStep
from gitorch.strategies.canary import analysis_label, canary_step, carried, needed
from gitorch.strategies.machine import AnalysisStatus, Create, Phase, ReplicaView, Stop

A = Analysis(count=1)
SPEC = Canary(
    steps=(
        CanaryStep(set_weight=20),
        CanaryStep(is_pause=True, pause_seconds=30),
        CanaryStep(analysis=A),
        CanaryStep(set_weight=50),
        CanaryStep(is_pause=True),
    )
)


def old(n: int) -> list[ReplicaView]:
    return [ReplicaView(f"o{s}", s, "A", "running", True, 0.0) for s in range(1, n + 1)]


def new(*slots: int, ready: bool = True) -> list[ReplicaView]:
    return [ReplicaView(f"n{s}", s, "B", "running", ready, 0.0 if ready else None) for s in slots]


def inp_with(replicas: list[ReplicaView], **kwargs: object):  # type: ignore[no-untyped-def]
    return rollout_input(5, replicas=tuple(replicas), stable="A", **kwargs)


@pytest.mark.parametrize(
    ("desired", "weight", "count"),
    [
        (5, 0, 0),
        (5, 1, 1),
        (5, 20, 1),
        (5, 21, 2),
        (5, 50, 3),
        (5, 100, 5),
        (1, 10, 1),
        (10, 35, 4),
    ],
)
def test_needed(desired: int, weight: int, count: int) -> None:
    assert needed(desired, weight) == count == needed_for(desired, weight)


def test_carried_keeps_the_previous_step_weight() -> None:
    assert carried(4, [0, 10, 50], 1) == 10  # 50% needs 2 ready: keep 10
    assert carried(4, [0, 10, 50], 2) == 50
    assert carried(4, [0, 10, 50], 0) == 0


def test_set_weight_starts_replicas_and_waits_for_them() -> None:
    decision = canary_step(inp_with(old(5)), SPEC)
    assert decision.phase is Phase.PROGRESSING
    assert decision.actions == (Create(1, "B"),)
    assert decision.weights == {"B": 0, "A": 100}
    assert decision.step == 0
    not_ready = canary_step(inp_with(old(5) + new(1, ready=False)), SPEC)
    assert not_ready.actions == () and not_ready.weights["B"] == 0 and not_ready.step == 0
    ready = canary_step(inp_with(old(5) + new(1)), SPEC)
    assert ready.weights == {"B": 20, "A": 80}
    assert ready.step == 1


def test_weight_change_waits_for_all_its_replicas() -> None:
    # Step 3 is setWeight 50 (3 of 5); with 2 canary ready the previous 20% stays.
    inp = inp_with(old(5) + new(1, 2) + new(3, ready=False), step=3)
    decision = canary_step(inp, SPEC)
    assert decision.weights == {"B": 20, "A": 80}
    assert decision.step == 3
    assert "waiting for 1 canary replicas ready" in decision.message
    done = canary_step(replace(inp, replicas=tuple(old(5) + new(1, 2, 3))), SPEC)
    assert done.weights == {"B": 50, "A": 50} and done.step == 4


def test_crashed_canary_lowers_the_weight_at_once() -> None:
    replicas = old(5) + new(1, 2) + [ReplicaView("n3", 3, "B", "exited")]
    decision = canary_step(inp_with(replicas, step=4), SPEC)  # pause after 50%
    assert decision.weights == {"B": 20, "A": 80}
    assert Stop("n3", "exited") in decision.actions
    assert Create(3, "B") in decision.actions


def test_timed_pause() -> None:
    inp = inp_with(old(5) + new(1), step=1, step_started_at=1000.0, now=1010.0)
    paused = canary_step(inp, SPEC)
    assert paused.phase is Phase.PAUSED and paused.step == 1 and "20s left" in paused.message
    assert paused.weights == {"B": 20, "A": 80}
    over = canary_step(replace(inp, now=1030.0), SPEC)
    assert over.phase is Phase.PROGRESSING and over.step == 2


def test_untimed_pause_waits_for_promote() -> None:
    inp = inp_with(old(5) + new(1, 2, 3), step=4, now=99999.0)
    assert canary_step(inp, SPEC).phase is Phase.PAUSED
    assert "gitorch promote web" in canary_step(inp, SPEC).message
    promoted = canary_step(replace(inp, promote_requested=True), SPEC)
    assert promoted.step == 5


@pytest.mark.parametrize(
    ("status", "phase", "step"),
    [
        (None, Phase.PROGRESSING, 2),
        ("running", Phase.PROGRESSING, 2),
        ("successful", Phase.PROGRESSING, 3),
        ("inconclusive", Phase.PAUSED, 2),
        ("failed", Phase.FAILED, 2),
    ],
)
def test_analysis_step(status: str | None, phase: Phase, step: int) -> None:
    analyses = {} if status is None else {"step-2": AnalysisStatus(status, "why")}
    decision = canary_step(inp_with(old(5) + new(1), step=2, analyses=analyses), SPEC)
    assert decision.phase is phase
    assert decision.step == step
    if status != "failed":
        assert [r.key for r in decision.analyses] == ["step-2"]
        assert decision.analyses[0].version == "B" and decision.analyses[0].baseline == "A"
    else:
        assert decision.weights == {"B": 0, "A": 100}
        assert decision.failure and "analysis failed: why" in decision.failure
        assert not decision.analyses  # a failed rollout asks for nothing more
    if status == "inconclusive":
        assert "inconclusive" in decision.message


def test_an_analysis_is_labelled_with_the_step_the_progress_line_names() -> None:
    decision = canary_step(inp_with(old(5) + new(1), step=2), SPEC)
    label = analysis_label(decision.analyses[0].key)
    assert label == "step 3"
    assert f"{label}/{len(SPEC.steps)} (analysis" in decision.message
    assert analysis_label("background-1") == "background at step 2"
    for key in ("pre-promotion", "abtest", "step-x", "odd"):
        assert analysis_label(key) == key


def test_inconclusive_moves_on_only_with_promote() -> None:
    analyses = {"step-2": AnalysisStatus("inconclusive")}
    inp = inp_with(old(5) + new(1), step=2, analyses=analyses, promote_requested=True)
    assert canary_step(inp, SPEC).step == 3


def test_abort_sets_new_weight_zero() -> None:
    decision = canary_step(inp_with(old(5) + new(1, 2, 3), step=4, abort_requested=True), SPEC)
    assert decision.phase is Phase.FAILED
    assert decision.weights == {"B": 0, "A": 100}
    assert decision.failure == "aborted by `gitorch abort`"


def test_background_analysis_per_step() -> None:
    spec = replace(SPEC, analysis=A)
    first = canary_step(inp_with(old(5)), spec)
    assert first.analyses == ()  # weight 0: nothing to measure yet
    inp = inp_with(old(5) + new(1), step=1, now=1001.0)
    assert [r.key for r in canary_step(inp, spec).analyses] == ["background-1"]
    failed = replace(inp, analyses={"background-1": AnalysisStatus("failed", "5xx")})
    decision = canary_step(failed, spec)
    assert decision.phase is Phase.FAILED and decision.weights["B"] == 0
    inconclusive = replace(inp, analyses={"background-1": AnalysisStatus("inconclusive")})
    assert canary_step(inconclusive, spec).phase is Phase.PAUSED


def test_promotion_scales_up_then_switches_then_stops_old() -> None:
    inp = inp_with(old(5) + new(1, 2, 3), step=5)
    scaling = canary_step(inp, SPEC)
    assert [a for a in scaling.actions if isinstance(a, Create)] == [
        Create(4, "B"),
        Create(5, "B"),
    ]
    assert scaling.weights == {"B": 50, "A": 50}
    full = canary_step(replace(inp, replicas=tuple(old(5) + new(1, 2, 3, 4, 5))), SPEC)
    assert full.weights == {"B": 100}
    assert sorted(a.replica_id for a in full.actions if isinstance(a, Stop)) == [
        f"o{s}" for s in range(1, 6)
    ]
    done = canary_step(replace(inp, replicas=tuple(new(1, 2, 3, 4, 5))), SPEC)
    assert done.phase is Phase.HEALTHY and done.weights == {"B": 100}


def test_first_deploy_goes_straight_to_full_size() -> None:
    decision = canary_step(rollout_input(3, stable=None), SPEC)
    assert [a for a in decision.actions if isinstance(a, Create)] == [
        Create(1, "B"),
        Create(2, "B"),
        Create(3, "B"),
    ]


def test_missing_stable_replicas_are_recreated_when_stable_is_known() -> None:
    replicas = old(5)[1:] + new(1)
    assert Create(1, "A") in canary_step(inp_with(replicas, step=1), SPEC).actions
    guessed = canary_step(replace(inp_with(replicas, step=1), stable=None), SPEC)
    assert Create(1, "A") not in guessed.actions


def test_deadline_while_waiting_for_canary_replicas() -> None:
    inp = inp_with(old(5) + new(1, ready=False), now=2000.0, progress_deadline_seconds=600.0)
    decision = canary_step(inp, SPEC)
    assert decision.phase is Phase.FAILED and decision.weights["B"] == 0
    assert "progress deadline" in (decision.failure or "")
    # Nor for time no daemon watched: a window from the daemon's start.
    restarted = replace(inp, watching_since=1990.0)
    assert canary_step(restarted, SPEC).phase is not Phase.FAILED
    # A long pause is not a stall.
    paused = inp_with(old(5) + new(1, 2, 3), step=4, now=5000.0)
    assert canary_step(paused, SPEC).phase is Phase.PAUSED


# --- Simulations --------------------------------------------------------------------------

SIM = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VERDICTS = st.sampled_from(["successful", "successful", "failed", "inconclusive"])

step_kinds = st.one_of(
    st.builds(lambda: CanaryStep(is_pause=True, pause_seconds=10)),
    st.builds(lambda: CanaryStep(is_pause=True)),
    st.builds(lambda: CanaryStep(analysis=A)),
)


@st.composite
def canaries(draw: st.DrawFn) -> Canary:
    weights = sorted(draw(st.lists(st.integers(1, 100), min_size=1, max_size=3)))
    steps: list[CanaryStep] = []
    for weight in weights:
        steps.append(CanaryStep(set_weight=weight))
        steps += draw(st.lists(step_kinds, max_size=2))
    background = draw(st.booleans())
    return Canary(steps=tuple(steps), analysis=A if background else None)


@SIM
@given(st.integers(1, 6), canaries(), st.data())
def test_canary_simulation(desired: int, spec: Canary, data: st.DataObject) -> None:
    """Random canaries on a cluster where replicas start slowly or crash, analyses end
    any way, promote and abort come at random: every pass keeps the invariants."""
    cluster = Cluster(readiness=lambda c: data.draw(st.integers(0, 2), "ready in"))
    for slot in range(1, desired + 1):
        cluster.add(slot, "A")
    reconciler = ProgressiveReconciler(cluster, rollout_input(desired, stable="A"))
    reconciler.verdict = lambda key: (data.draw(VERDICTS, key), data.draw(st.integers(0, 2)))
    reconciler.begin("B")
    for _ in range(60):
        if data.draw(st.integers(0, 6), "promote?") == 0:
            reconciler.promote = True
        if data.draw(st.integers(0, 40), "abort?") == 0:
            reconciler.abort = True
        live = sorted(r.id for r in cluster.live() if r.state == "running")
        if live and data.draw(st.integers(0, 8), "crash?") == 0:
            cluster.crash(data.draw(st.sampled_from(live), "victim"))
        inp = reconciler.observe()
        decision = canary_step(inp, spec)
        check_progressive_pass(inp, decision)
        if decision.phase is Phase.FAILED:
            return  # the reconciler rolls back from here
        if decision.phase is Phase.HEALTHY:
            assert {r.template for r in cluster.live()} <= {"B"}
            return
        if new_weight(inp, decision) == 100 and decision.step != len(spec.steps):
            # 100% before the end only where a step asks for it
            assert any(s.set_weight == 100 for s in spec.steps[: (decision.step or 0) + 1])
        cluster.execute(decision)
        check_cluster(cluster)
        reconciler.record(decision)
        cluster.tick()


@SIM
@given(st.integers(1, 6), canaries())
def test_canary_reaches_healthy_when_all_goes_well(desired: int, spec: Canary) -> None:
    cluster = Cluster()
    for slot in range(1, desired + 1):
        cluster.add(slot, "A")
    reconciler = ProgressiveReconciler(cluster, rollout_input(desired, stable="A"))
    reconciler.begin("B")
    weights: list[int] = []
    for _ in range(200):
        inp = reconciler.observe()
        reconciler.promote = False
        decision = canary_step(inp, spec)
        check_progressive_pass(inp, decision)
        weights.append(new_weight(inp, decision))
        if decision.phase is Phase.HEALTHY:
            break
        if decision.phase is Phase.PAUSED and "gitorch promote" in decision.message:
            reconciler.promote = True
        cluster.execute(decision)
        reconciler.record(decision)
        cluster.tick()
    else:
        raise AssertionError("no healthy canary after 200 passes")
    assert weights == sorted(weights), "weights went down without trouble"
    step_weights = {s.set_weight for s in spec.steps if s.set_weight is not None}
    assert set(weights) <= step_weights | {0, 100}
    assert sorted(r.template for r in cluster.live()) == ["B"] * desired


def test_stable_crashing_does_not_promote_an_unfinished_canary() -> None:
    replicas = [ReplicaView(f"o{s}", s, "A", "exited") for s in range(1, 6)] + new(1, 2, 3, 4, 5)
    spec = Canary(steps=(CanaryStep(set_weight=100), CanaryStep(is_pause=True)))
    decision = canary_step(inp_with(replicas, step=1), spec)
    assert decision.phase is Phase.PAUSED
    assert [a for a in decision.actions if isinstance(a, Create)] == [
        Create(s, "A") for s in range(1, 6)
    ]
