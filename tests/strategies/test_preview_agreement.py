"""The plan preview (``plan_batches``) and the rollout (``rolling_step``) agree, pass by pass.

Simulated with replicas that are ready by the next pass, pass *k* of the rollout starts
exactly what batch *k* starts and stops what batch *k-1* stopped once its new replicas
were ready plus what batch *k* stops before starting (``Batch.stop_first``); one last pass
stops what the last batch stops after. So ``gitorch plan``'s "batch N: start X new, then
stop Y old" is what ``gitorch apply`` does, as long as every new replica gets ready.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategy_sim import Cluster, Reconciler, check_cluster, check_pass, rollout_input

from gitorch.strategies import Create, Phase, Stop, plan_batches, rolling_step

Wave = tuple[int, int]  # (creates, stops) of one pass


def rollout_waves(
    desired: int, old: int, max_surge: int | str, max_unavailable: int | str
) -> list[Wave]:
    """Run a rolling update from ``old`` ready replicas to ``desired`` new ones."""
    cluster = Cluster()  # every new replica is ready by the next pass
    for slot in range(1, old + 1):
        cluster.add(slot, "A")
    reconciler = Reconciler(
        cluster, rollout_input(desired, max_surge=max_surge, max_unavailable=max_unavailable)
    )
    waves: list[Wave] = []
    for _ in range(4 * (desired + old) + 2):
        inp = reconciler.observe()
        decision = rolling_step(inp)
        check_pass(inp, decision)
        if decision.phase is Phase.HEALTHY and not decision.actions:
            return waves
        creates = sum(1 for a in decision.actions if isinstance(a, Create))
        stops = sum(1 for a in decision.actions if isinstance(a, Stop))
        assert creates or stops, f"a pass with nothing to do: {decision.message}"
        waves.append((creates, stops))
        cluster.execute(decision)
        check_cluster(cluster)
        cluster.tick()
    raise AssertionError(f"no fixed point after {len(waves)} passes")


def preview_waves(
    desired: int, old: int, max_surge: int | str, max_unavailable: int | str
) -> list[Wave]:
    """The passes the preview's batches imply."""
    waves: list[Wave] = []
    stop_after = 0
    for batch in plan_batches(desired, old, max_surge, max_unavailable):
        waves.append((batch.start, stop_after + batch.stop_first))
        stop_after = batch.stop - batch.stop_first
    if stop_after:
        waves.append((0, stop_after))
    return waves


def test_known_rollouts() -> None:
    # 3 -> 3, maxSurge 1: start one; then stop one old and start the next, twice; stop the last.
    assert rollout_waves(3, 3, 1, 0) == [(1, 0), (1, 1), (1, 1), (0, 1)]
    # maxSurge 0, maxUnavailable 1: stop first, then start into the room.
    assert rollout_waves(3, 3, 0, 1) == [(1, 1), (1, 1), (1, 1)]
    # Scale-down with a new template: stop down to the ceiling first.
    assert rollout_waves(2, 5, 1, 0) == [(1, 3), (1, 1), (0, 1)]
    # Recreate-like limits.
    assert rollout_waves(4, 4, 0, "100%") == [(4, 4)]


LIMITS: list[int | str] = [0, 1, 2, "25%", "50%", "100%"]


@pytest.mark.parametrize(("max_surge", "max_unavailable"), list(itertools.product(LIMITS, LIMITS)))
def test_every_small_rollout_matches_its_preview(
    max_surge: int | str, max_unavailable: int | str
) -> None:
    for desired, old in itertools.product(range(0, 9), range(0, 9)):
        expected = preview_waves(desired, old, max_surge, max_unavailable)
        assert rollout_waves(desired, old, max_surge, max_unavailable) == expected, (
            desired,
            old,
        )


@settings(max_examples=100, deadline=None)
@given(
    desired=st.integers(0, 40),
    old=st.integers(0, 40),
    max_surge=st.one_of(st.integers(0, 8), st.sampled_from(["10%", "25%", "33%", "100%"])),
    max_unavailable=st.one_of(st.integers(0, 8), st.sampled_from(["10%", "25%", "33%", "100%"])),
)
def test_larger_rollouts_match_their_preview(
    desired: int, old: int, max_surge: int | str, max_unavailable: int | str
) -> None:
    assert rollout_waves(desired, old, max_surge, max_unavailable) == preview_waves(
        desired, old, max_surge, max_unavailable
    )
