"""BlueGreen: table-driven passes and random simulations on the simulated cluster."""

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
    is_available,
    new_weight,
    rollout_input,
)

from gitorch.manifests.model import Analysis, BlueGreen
from gitorch.strategies.bluegreen import bluegreen_step
from gitorch.strategies.machine import AnalysisStatus, Create, Phase, ReplicaView, Stop

SPEC = BlueGreen(preview_port=8001, auto_promotion_seconds=None, scale_down_delay_seconds=30)


def colour(template: str, *slots: int, ready: bool = True) -> list[ReplicaView]:
    return [
        ReplicaView(f"{template}{s}", s, template, "running", ready, 0.0 if ready else None)
        for s in slots
    ]


def inp_with(replicas: list[ReplicaView], **kwargs: object):  # type: ignore[no-untyped-def]
    return rollout_input(3, replicas=tuple(replicas), stable="A", **kwargs)


def test_new_colour_starts_at_full_size_behind_the_preview() -> None:
    decision = bluegreen_step(inp_with(colour("A", 1, 2, 3)), SPEC)
    assert decision.actions == (Create(1, "B"), Create(2, "B"), Create(3, "B"))
    assert decision.weights == {"B": 0, "A": 100}
    assert decision.preview == "B"
    assert decision.phase is Phase.PROGRESSING and decision.step == 0


def test_no_switch_before_the_whole_colour_is_ready_even_on_promote() -> None:
    replicas = colour("A", 1, 2, 3) + colour("B", 1, 2) + colour("B", 3, ready=False)
    decision = bluegreen_step(inp_with(replicas, promote_requested=True), SPEC)
    assert decision.weights == {"B": 0, "A": 100} and decision.step == 0


def test_waits_for_promote_then_switches_at_once() -> None:
    inp = inp_with(colour("A", 1, 2, 3) + colour("B", 1, 2, 3))
    waiting = bluegreen_step(inp, SPEC)
    assert waiting.phase is Phase.PAUSED and "gitorch promote web" in waiting.message
    switch = bluegreen_step(replace(inp, promote_requested=True), SPEC)
    assert switch.weights == {"B": 100, "A": 0} and switch.step == 1
    assert switch.preview is None
    assert not any(isinstance(a, Stop) for a in switch.actions)


def test_auto_promotion_after_ready_for_long_enough() -> None:
    spec = replace(SPEC, auto_promotion_seconds=20)
    inp = inp_with(colour("A", 1, 2, 3) + colour("B", 1, 2, 3), last_progress_at=1000.0)
    assert bluegreen_step(replace(inp, now=1019.0), spec).step == 0
    assert "switching in 1s" in bluegreen_step(replace(inp, now=1019.0), spec).message
    assert bluegreen_step(replace(inp, now=1020.0), spec).step == 1


@pytest.mark.parametrize(
    ("status", "phase", "step"),
    [
        ("running", Phase.PROGRESSING, 0),
        ("successful", Phase.PROGRESSING, 1),
        ("inconclusive", Phase.PAUSED, 0),
        ("failed", Phase.FAILED, 0),
    ],
)
def test_pre_promotion_analysis(status: str, phase: Phase, step: int) -> None:
    spec = replace(SPEC, auto_promotion_seconds=0, pre_promotion_analysis=Analysis())
    inp = inp_with(
        colour("A", 1, 2, 3) + colour("B", 1, 2, 3),
        analyses={"pre-promotion": AnalysisStatus(status, "why")},
    )
    decision = bluegreen_step(inp, spec)
    assert decision.phase is phase and decision.step == step
    assert decision.weights["B"] == (100 if step == 1 else 0)


def test_old_colour_kept_for_the_delay_then_stopped() -> None:
    inp = inp_with(
        colour("A", 1, 2, 3) + colour("B", 1, 2, 3), step=1, step_started_at=1000.0, now=1029.0
    )
    kept = bluegreen_step(inp, SPEC)
    assert kept.actions == () and kept.weights == {"B": 100, "A": 0}
    assert "kept 1s more" in kept.message
    stopped = bluegreen_step(replace(inp, now=1030.0), SPEC)
    assert sorted(a.replica_id for a in stopped.actions if isinstance(a, Stop)) == [
        "A1",
        "A2",
        "A3",
    ]
    done = bluegreen_step(replace(inp, replicas=tuple(colour("B", 1, 2, 3))), SPEC)
    assert done.phase is Phase.HEALTHY


def test_abort_in_the_window_switches_back_instantly() -> None:
    inp = inp_with(
        colour("A", 1, 2, 3) + colour("B", 1, 2, 3),
        step=1,
        step_started_at=1000.0,
        now=1010.0,
        abort_requested=True,
    )
    decision = bluegreen_step(inp, SPEC)
    assert decision.phase is Phase.FAILED
    assert decision.weights == {"B": 0, "A": 100}
    done = replace(inp, replicas=tuple(colour("B", 1, 2, 3)))
    assert bluegreen_step(done, SPEC).phase is Phase.HEALTHY  # too late: nothing to go back to


# --- Simulation ---------------------------------------------------------------------------

SIM = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SIM
@given(
    st.integers(1, 5),
    st.one_of(st.none(), st.integers(0, 20)),
    st.integers(0, 30),
    st.booleans(),
    st.data(),
)
def test_bluegreen_simulation(
    desired: int, auto: int | None, delay: int, analysis: bool, data: st.DataObject
) -> None:
    spec = BlueGreen(
        preview_port=8001,
        auto_promotion_seconds=auto,
        scale_down_delay_seconds=delay,
        pre_promotion_analysis=Analysis() if analysis else None,
    )
    cluster = Cluster(readiness=lambda c: data.draw(st.integers(0, 2), "ready in"))
    for slot in range(1, desired + 1):
        cluster.add(slot, "A")
    reconciler = ProgressiveReconciler(cluster, rollout_input(desired, stable="A"))
    reconciler.verdict = lambda key: (
        data.draw(st.sampled_from(["successful", "failed", "inconclusive"]), key),
        data.draw(st.integers(0, 2)),
    )
    reconciler.begin("B")
    for _ in range(60):
        if data.draw(st.integers(0, 5), "promote?") == 0:
            reconciler.promote = True
        if data.draw(st.integers(0, 30), "abort?") == 0:
            reconciler.abort = True
        live = sorted(r.id for r in cluster.live() if r.state == "running")
        if live and data.draw(st.integers(0, 10), "crash?") == 0:
            cluster.crash(data.draw(st.sampled_from(live), "victim"))
        inp = reconciler.observe()
        decision = bluegreen_step(inp, spec)
        check_progressive_pass(inp, decision, capacity=(inp.step or 0) == 0)
        new_ready = [r for r in inp.replicas if r.template == "B" and is_available(r, inp)]
        if (inp.step or 0) == 0 and decision.step == 1:
            assert len(new_ready) == desired, "switched before the whole new colour was ready"
        if (inp.step or 0) == 0 and decision.step == 0:
            assert new_weight(inp, decision) == 0
        if decision.preview is not None:
            assert decision.preview == "B" and decision.step == 0
        stopped_old = [
            a
            for a in decision.actions
            if isinstance(a, Stop)
            and any(
                r.id == a.replica_id and r.template == "A" and r.state != "exited"
                for r in inp.replicas
            )
        ]
        if stopped_old:
            assert inp.step == 1 and inp.step_started_at is not None
            assert inp.now - inp.step_started_at >= delay, "old colour stopped before the delay"
        if decision.phase in (Phase.FAILED, Phase.HEALTHY):
            return
        cluster.execute(decision)
        check_cluster(cluster)
        reconciler.record(decision)
        cluster.tick()
