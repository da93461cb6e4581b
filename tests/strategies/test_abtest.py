"""ABTest: table-driven passes and random simulations on the simulated cluster."""

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
    new_weight,
    rollout_input,
)

from gitorch.manifests.model import ABTest, Analysis, MatchRule
from gitorch.strategies.abtest import abtest_step
from gitorch.strategies.machine import AnalysisStatus, Create, Phase, ReplicaView, Stop

RULES = (MatchRule(header="X-Variant", exact="b"), MatchRule(cookie="variant", exact="b"))
SPEC = ABTest(match=RULES, duration_seconds=60, analysis=Analysis())


def version(template: str, *slots: int, ready: bool = True) -> list[ReplicaView]:
    return [
        ReplicaView(f"{template}{s}", s, template, "running", ready, 0.0 if ready else None)
        for s in slots
    ]


def inp_with(replicas: list[ReplicaView], **kwargs: object):  # type: ignore[no-untyped-def]
    return rollout_input(2, replicas=tuple(replicas), stable="A", **kwargs)


BOTH = version("A", 1, 2) + version("B", 1, 2)


def test_new_version_starts_without_rules() -> None:
    decision = abtest_step(inp_with(version("A", 1, 2)), SPEC)
    assert decision.actions == (Create(1, "B"), Create(2, "B"))
    assert decision.match == () and decision.weights == {"B": 0, "A": 100}
    partly = abtest_step(inp_with(version("A", 1, 2) + version("B", 1)), SPEC)
    assert partly.match == () and partly.step == 0


def test_test_starts_once_the_new_version_is_ready() -> None:
    decision = abtest_step(inp_with(BOTH), SPEC)
    assert decision.step == 1 and decision.match == RULES
    assert decision.weights == {"B": 0, "A": 100}


def test_test_runs_for_its_duration_with_the_analysis() -> None:
    inp = inp_with(BOTH, step=1, step_started_at=1000.0, now=1030.0)
    running = abtest_step(inp, SPEC)
    assert running.step == 1 and running.match == RULES and "30s left" in running.message
    assert [(r.key, r.version, r.baseline) for r in running.analyses] == [("abtest", "B", "A")]
    over = replace(inp, now=1060.0, analyses={"abtest": AnalysisStatus("successful")})
    assert abtest_step(over, SPEC).step == 2
    early = replace(inp, analyses={"abtest": AnalysisStatus("successful")})
    assert abtest_step(early, SPEC).step == 1  # a good analysis does not cut the test short


@pytest.mark.parametrize(
    ("status", "phase", "step"),
    [
        ("running", Phase.PROGRESSING, 1),
        ("inconclusive", Phase.PAUSED, 1),
        ("failed", Phase.FAILED, 1),
        ("successful", Phase.PROGRESSING, 2),
    ],
)
def test_verdict_after_the_duration(status: str, phase: Phase, step: int) -> None:
    inp = inp_with(
        BOTH, step=1, step_started_at=0.0, now=1000.0, analyses={"abtest": AnalysisStatus(status)}
    )
    decision = abtest_step(inp, SPEC)
    assert decision.phase is phase and decision.step == step
    if phase is Phase.FAILED:
        assert decision.match == () and decision.weights == {"B": 0, "A": 100}


def test_promote_true_promotes_like_a_canary() -> None:
    decision = abtest_step(inp_with(BOTH, step=2), SPEC)
    assert decision.weights == {"B": 100} and decision.match == ()
    assert sorted(a.replica_id for a in decision.actions if isinstance(a, Stop)) == ["A1", "A2"]
    assert abtest_step(inp_with(version("B", 1, 2), step=2), SPEC).phase is Phase.HEALTHY


def test_promote_false_keeps_both_running() -> None:
    spec = replace(SPEC, promote=False)
    decision = abtest_step(inp_with(BOTH, step=2), spec)
    assert decision.phase is Phase.HEALTHY
    assert decision.match == RULES and decision.weights == {"B": 0, "A": 100}
    assert decision.actions == ()
    crashed = version("A", 1, 2) + version("B", 1)
    assert Create(2, "B") in abtest_step(inp_with(crashed, step=2), spec).actions


def test_abort_turns_the_rules_off() -> None:
    decision = abtest_step(inp_with(BOTH, step=1, abort_requested=True), SPEC)
    assert decision.phase is Phase.FAILED and decision.match == ()
    assert decision.weights == {"B": 0, "A": 100}


# --- Simulation ---------------------------------------------------------------------------

SIM = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SIM
@given(st.integers(1, 5), st.integers(0, 40), st.booleans(), st.booleans(), st.data())
def test_abtest_simulation(
    desired: int, duration: int, promote: bool, analysis: bool, data: st.DataObject
) -> None:
    spec = ABTest(
        match=RULES,
        duration_seconds=duration,
        analysis=Analysis() if analysis else None,
        promote=promote,
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
        if data.draw(st.integers(0, 6), "promote?") == 0:
            reconciler.promote = True
        if data.draw(st.integers(0, 30), "abort?") == 0:
            reconciler.abort = True
        live = sorted(r.id for r in cluster.live() if r.state == "running")
        if live and data.draw(st.integers(0, 10), "crash?") == 0:
            cluster.crash(data.draw(st.sampled_from(live), "victim"))
        inp = reconciler.observe()
        decision = abtest_step(inp, spec)
        check_progressive_pass(inp, decision)
        assert decision.match in ((), RULES)
        if new_weight(inp, decision) > 0:
            # non-matching traffic reaches the new version only after a promoted test
            assert promote and inp.step == 2
            assert decision.match == ()
        if decision.phase is Phase.FAILED:
            return
        if decision.phase is Phase.HEALTHY:
            templates = {r.template for r in cluster.live()}
            assert templates == {"B"} if promote else templates <= {"A", "B"}
            if not promote:
                assert decision.match == RULES
            return
        cluster.execute(decision)
        check_cluster(cluster)
        reconciler.record(decision)
        cluster.tick()


def test_old_version_crashing_does_not_conclude_the_test() -> None:
    crashed = [ReplicaView(f"A{s}", s, "A", "exited") for s in (1, 2)] + version("B", 1, 2)
    decision = abtest_step(inp_with(crashed, step=1, step_started_at=1000.0), SPEC)
    assert decision.phase is not Phase.HEALTHY
    assert {Create(1, "A"), Create(2, "A")} <= set(decision.actions)
    assert decision.weights == {"B": 0, "A": 100} and decision.match == RULES
