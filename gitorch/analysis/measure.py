"""One measurement of an analysis block: the built-in figures, Prometheus, or both.

The built-in figures always gate on ``minRequests`` (no analysis passes without traffic,
Prometheus or not) and are judged on ``successRate`` / ``maxLatencyP99`` when set; with a
``prometheus`` block its query is judged too, and the worse verdict wins
(:func:`gitorch.analysis.evaluate.combine`).
"""

from __future__ import annotations

from gitorch.analysis.evaluate import Measurement, VersionWindow, combine, evaluate
from gitorch.analysis.prometheus import DEFAULT_TIMEOUT, measure_prometheus
from gitorch.manifests.model import Analysis


def measure(
    analysis: Analysis,
    figures: VersionWindow,
    *,
    baseline: VersionWindow | None = None,
    service: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> Measurement:
    """Measure ``figures.version`` of ``service`` once (does I/O only with Prometheus)."""
    builtin = evaluate(analysis, figures, baseline=baseline)
    if analysis.prometheus is None:
        return builtin
    queried = measure_prometheus(
        analysis.prometheus, version=figures.version, service=service, timeout=timeout
    )
    return combine(builtin, queried)
