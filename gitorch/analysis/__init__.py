"""gitorch.analysis: judging a version during a progressive rollout.

- :mod:`~gitorch.analysis.evaluate`: one measurement from the load balancer's figures (pure);
- :mod:`~gitorch.analysis.prometheus`: one measurement from a Prometheus query;
- :mod:`~gitorch.analysis.condition`: the safe ``successCondition`` language (no eval);
- :mod:`~gitorch.analysis.measure`: both together, as an analysis block asks;
- :mod:`~gitorch.analysis.run`: ``count`` measurements every ``interval`` and the verdict.
"""

from gitorch.analysis.condition import Condition, ConditionSyntaxError, parse_condition
from gitorch.analysis.evaluate import (
    Measurement,
    MeasurementPhase,
    VersionWindow,
    combine,
    evaluate,
)
from gitorch.analysis.measure import measure
from gitorch.analysis.prometheus import PrometheusQueryFailed, measure_prometheus, query_value
from gitorch.analysis.run import (
    CONSECUTIVE_ERROR_LIMIT,
    AnalysisRun,
    RunPhase,
    advance,
    resume,
    start,
    take,
)

__all__ = [
    "CONSECUTIVE_ERROR_LIMIT",
    "AnalysisRun",
    "Condition",
    "ConditionSyntaxError",
    "Measurement",
    "MeasurementPhase",
    "PrometheusQueryFailed",
    "RunPhase",
    "VersionWindow",
    "advance",
    "combine",
    "evaluate",
    "measure",
    "measure_prometheus",
    "parse_condition",
    "query_value",
    "resume",
    "start",
    "take",
]
