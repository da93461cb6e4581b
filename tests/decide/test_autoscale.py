"""The horizontal autoscaler's decision (pure): the Kubernetes HPA algorithm, table by table."""

from __future__ import annotations

import pytest
from decide_helpers import load_docs

from gitorch.decide.autoscale import (
    MetricReading,
    ScaleDecision,
    ScaleInput,
    ScaleMemory,
    decide_scale,
    metric_proposal,
)
from gitorch.decide.service import BoundsScale, bounds_scale
from gitorch.live.model import LiveReplica, LiveService
from gitorch.manifests.model import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Autoscale,
    AutoscaleMetric,
    ScalingPolicy,
    ScalingRules,
)

CPU = AutoscaleMetric("cpu", target_average_utilization=50)


def spec(
    low: int = 1,
    high: int = 10,
    up: ScalingRules = DEFAULT_SCALE_UP,
    down: ScalingRules = DEFAULT_SCALE_DOWN,
) -> Autoscale:
    return Autoscale(low, high, (CPU,), scale_down=down, scale_up=up)


def cpu(value: float | None, measured: int, target: float = 50) -> MetricReading:
    return MetricReading("cpu", target, value, measured, "" if value is not None else "no stats")


@pytest.mark.parametrize(
    ("value", "target", "measured", "current", "expected"),
    [
        (100, 50, 2, 2, 4),  # twice the target: twice the replicas
        (54, 50, 2, 2, 2),  # within the 0.1 tolerance: no change
        (45.5, 50, 2, 2, 2),  # within the tolerance below too
        (56, 50, 2, 2, 3),  # just past it: ceil(1.12 * 2)
        (10, 50, 4, 4, 1),  # a fifth of the target: ceil(0.2 * 4) = 1
        (0, 50, 3, 3, 0),  # idle: the bounds (not this function) keep the minimum
        (150, 50, 1, 3, 3),  # two replicas unread count as idle: 150*1/3 = 50: no change
        (200, 50, 1, 3, 4),  # unread as idle: 200/3/50 = 1.33 -> ceil(4.0) = 4
        (10, 50, 1, 3, 3),  # scale-down with unread replicas at target: (10+100)/3/50 = 0.73
    ],
)
def test_one_metric_proposal(
    value: float, target: float, measured: int, current: int, expected: int
) -> None:
    assert metric_proposal(MetricReading("cpu", target, value, measured), current) == expected


def test_unread_replicas_on_a_scale_down_are_counted_at_target() -> None:
    # (30*2 + 50*2) / 4 / 50 = 0.8 -> ceil(0.8 * 4) = 4: the replicas that gave nothing
    # hold the count up (ceil), as in Kubernetes.
    assert metric_proposal(MetricReading("cpu", 50, 30, 2), 4) == 4
    # (10*2 + 50*2) / 4 / 50 = 0.6 -> ceil(2.4) = 3
    assert metric_proposal(MetricReading("cpu", 50, 10, 2), 4) == 3


def test_no_reading_proposes_nothing() -> None:
    assert metric_proposal(MetricReading("cpu", 50, None, 0), 3) is None


DEFAULT = spec()
FORGOTTEN = ScaleMemory()


def decide(
    current: int,
    readings: list[MetricReading],
    *,
    spec: Autoscale = DEFAULT,
    now: float = 1000.0,
    memory: ScaleMemory = FORGOTTEN,
) -> ScaleDecision:
    return decide_scale(ScaleInput("web", spec, current, tuple(readings), now, memory))


def test_scale_up_happens_at_once() -> None:
    d = decide(1, [cpu(200, 1)])
    assert d.desired == 4 and d.changed
    assert "cpu 200/50 -> 4" in d.reason
    assert d.memory.events == ((1000.0, 3),)


def test_the_highest_metric_wins() -> None:
    rps = MetricReading("rps", 10, 30, 2)  # 3x -> 6
    d = decide(2, [cpu(75, 2), rps])  # cpu 1.5x -> 3
    assert d.desired == 6
    assert d.deciding.metric == "rps"


def test_a_missing_metric_never_lets_the_others_scale_down() -> None:
    rps = MetricReading("rps", 10, None, 0, "no traffic figures")
    d = decide(4, [cpu(5, 4), rps])
    assert d.desired == 4
    assert "rps not measured: no scale-down" in d.reason


def test_a_missing_metric_does_not_stop_a_scale_up() -> None:
    rps = MetricReading("rps", 10, None, 0, "no traffic figures")
    assert decide(2, [cpu(100, 2), rps]).desired == 4


def test_no_reading_at_all_keeps_the_count_within_bounds() -> None:
    assert decide(3, [cpu(None, 0)]).desired == 3
    d = decide(12, [cpu(None, 0)])
    assert d.desired == 10 and "bounds 1..10" in d.reason


def test_bounds_hold_both_ways() -> None:
    assert decide(2, [cpu(1000, 2)], spec=spec(high=5)).desired == 5
    assert decide(2, [cpu(0, 2)], spec=spec(low=2, down=ScalingRules(0))).desired == 2


def test_scale_down_waits_for_the_stabilization_window() -> None:
    # Recommendations of 4 in the last 300 s hold the count at 4.
    memory = ScaleMemory(recommendations=((900.0, 4), (950.0, 3)))
    d = decide(4, [cpu(10, 4)], memory=memory)
    assert d.desired == 4 and "stabilized at 4" in d.reason
    assert d.recommendation == 1
    # Once they are older than the window, the lower proposals count.
    later = decide(4, [cpu(10, 4)], memory=d.memory, now=1249.0)
    assert later.desired == 3  # 950's 3 is still in the window
    last = decide(3, [cpu(10, 3)], memory=later.memory, now=1400.0)
    assert last.desired == 1


def test_scale_up_stabilization_takes_the_lowest() -> None:
    up = ScalingRules(60, "Max", DEFAULT_SCALE_UP.policies)
    memory = ScaleMemory(recommendations=((990.0, 2),))
    d = decide(2, [cpu(200, 2)], spec=spec(up=up), memory=memory)
    assert d.desired == 2


def test_rate_policies_limit_a_scale_up() -> None:
    up = ScalingRules(0, "Max", (ScalingPolicy("Pods", 1, 60),))
    d = decide(1, [cpu(400, 1)], spec=spec(up=up))
    assert d.desired == 2 and "behavior policies" in d.reason
    # One pod was added 30 s ago: the period's budget is spent.
    again = decide(2, [cpu(400, 2)], spec=spec(up=up), memory=d.memory, now=1030.0)
    assert again.desired == 2
    # After the period, one more.
    later = decide(2, [cpu(400, 2)], spec=spec(up=up), memory=d.memory, now=1061.0)
    assert later.desired == 3


def test_default_scale_up_is_the_larger_of_four_pods_and_double() -> None:
    assert decide(1, [cpu(5000, 1)], spec=spec(high=100)).desired == 5
    assert decide(10, [cpu(5000, 10)], spec=spec(high=100)).desired == 20


def test_select_policy_min_and_disabled() -> None:
    policies = (ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15))
    least = ScalingRules(0, "Min", policies)
    assert decide(10, [cpu(5000, 10)], spec=spec(high=100, up=least)).desired == 14
    off = ScalingRules(0, "Disabled", policies)
    assert decide(10, [cpu(5000, 10)], spec=spec(high=100, up=off)).desired == 10


def test_percent_policy_limits_a_scale_down() -> None:
    down = ScalingRules(0, "Max", (ScalingPolicy("Percent", 50, 60),))
    d = decide(8, [cpu(1, 8)], spec=spec(down=down))
    assert d.desired == 4
    d2 = decide(4, [cpu(1, 4)], spec=spec(down=down), memory=d.memory, now=1010.0)
    assert d2.desired == 4  # 8 at the period's start: 50% = 4
    d3 = decide(4, [cpu(1, 4)], spec=spec(down=down), memory=d.memory, now=1061.0)
    assert d3.desired == 2


def test_no_metric_at_all_only_holds_the_bounds() -> None:
    d = decide(7, [], spec=spec(high=5))
    assert d.desired == 5 and "no horizontal metric" in d.reason


def test_a_count_out_of_bounds_is_a_scaling_decision_of_the_pass() -> None:
    """The pass holds an autoscaled count within its bounds; that change is a decision
    (from, to, why) the bookkeeper records, and none once the count is within them."""
    web = load_docs(
        """apiVersion: gitorch.dev/v1
kind: Service
metadata: {name: web}
spec:
  command: ["sleep", "60"]
  replicas: 1
  resources: {requests: {cpu: 100m}}
  autoscale:
    minReplicas: 3
    maxReplicas: 4
    metrics: [{type: cpu, targetAverageUtilization: 50}]
""",
        revision="a" * 40,
    ).services["web"]
    nothing = LiveService("web", None, ())
    five = LiveService(
        "web",
        None,
        tuple(
            LiveReplica(f"id{i}", f"web-{i}", "web", f"web-{i}", "n1", "a" * 40, None, "running")
            for i in range(1, 6)
        ),
    )
    assert bounds_scale(web, nothing, None, 7.0) == BoundsScale(
        "web", 1, 3, 3, 4, "below minReplicas", 7.0
    )
    assert bounds_scale(web, nothing, 2, 7.0) == BoundsScale(
        "web", 2, 3, 3, 4, "below minReplicas", 7.0, observed=2
    )
    assert bounds_scale(web, five, None, 7.0) == BoundsScale(
        "web", 5, 4, 3, 4, "above maxReplicas", 7.0
    )
    assert bounds_scale(web, nothing, 3, 7.0) is None
    assert bounds_scale(web, five, 4, 7.0) is None
