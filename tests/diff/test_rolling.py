"""RollingUpdate batches: the availability and surge invariants, over random inputs.

Each batch says how many new replicas start and how many old ones stop; the rollout stops
only what is needed to make room *before* starting (``ceiling`` overflow) and the rest
once the new ones are ready. Replaying the batches that way, independently of how
``plan_batches`` computes them, must never exceed desired + surge replicas nor leave fewer
than desired - unavailable available (unless there were fewer to begin with).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gitorch.strategies.rolling import Batch, plan_batches, resolve_limits

limit = st.one_of(st.integers(0, 6), st.sampled_from(["0%", "10%", "25%", "50%", "100%"]))


def test_known_batches() -> None:
    # 3 -> 3 with maxSurge 1, maxUnavailable 0: one at a time, start before stop.
    assert [(b.start, b.stop) for b in plan_batches(3, 3, 1, 0)] == [(1, 1)] * 3
    # 5 -> 5 with maxSurge 2, maxUnavailable 1.
    assert [(b.start, b.stop) for b in plan_batches(5, 5, 2, 1)] == [(2, 3), (3, 2)]
    # Recreate-like: maxSurge 0, maxUnavailable 100%: stop everything, start everything.
    assert [(b.start, b.stop) for b in plan_batches(4, 4, 0, "100%")] == [(4, 4)]
    assert plan_batches(0, 0, 1, 0) == []


def test_limits_round_like_kubernetes() -> None:
    assert resolve_limits(10, "25%", "25%") == (3, 2)  # surge up, unavailable down
    assert resolve_limits(3, 0, 0) == (1, 0)  # both 0 is never allowed: surge 1


def check_batches(
    desired: int, old: int, max_surge: int | str, max_unavailable: int | str, batches: list[Batch]
) -> None:
    """Replay ``batches`` and assert the invariants (raises AssertionError)."""
    surge, unavailable = resolve_limits(desired, max_surge, max_unavailable)
    ceiling = desired + surge
    floor = max(0, desired - unavailable)
    assert len(batches) <= old + desired + 1  # terminates, and without idle batches
    new = 0
    for batch in batches:
        assert batch.start > 0 or batch.stop > 0
        assert batch.stop <= old
        before_total = old + new
        # Stop first only what the ceiling requires, then start the new replicas.
        stop_first = max(0, old + new + batch.start - max(ceiling, before_total))
        assert stop_first <= batch.stop, "not enough stops to stay under the ceiling"
        # While the new ones become ready only old and earlier new replicas serve.
        available_during = old - stop_first + new
        assert available_during >= min(floor, before_total), "too few available"
        old -= batch.stop
        new += batch.start
        assert old + new >= min(floor, before_total), "too few after the batch"
        assert batch.total_max <= max(ceiling, before_total)
    assert (old, new) == (0, desired)


def test_the_checker_catches_a_bad_plan() -> None:
    # Replacing all 3 at once with maxSurge 1 / maxUnavailable 0 breaks availability.
    bad = [Batch(start=3, stop=3, total_max=4, available_min=3)]
    try:
        check_batches(3, 3, 1, 0, bad)
    except AssertionError as exc:
        assert "too few available" in str(exc)
    else:
        raise AssertionError("the checker accepted a plan that drops availability")


@settings(max_examples=400, deadline=None)
@given(
    desired=st.integers(0, 40),
    old=st.integers(0, 40),
    max_surge=limit,
    max_unavailable=limit,
)
def test_rolling_invariants(
    desired: int, old: int, max_surge: int | str, max_unavailable: int | str
) -> None:
    check_batches(
        desired,
        old,
        max_surge,
        max_unavailable,
        plan_batches(desired, old, max_surge, max_unavailable),
    )
