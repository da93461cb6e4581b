"""The Prometheus analysis provider: one instant query over Prometheus' HTTP API.

``GET {address}/api/v1/query?query=...`` with ``{{version}}`` and ``{{service}}`` in the
query replaced by the version (template digest) and service under analysis. The answer
must be a scalar or a vector of exactly one sample: that number is ``result`` in the
``successCondition``. Anything else (no answer within the timeout, an HTTP or PromQL error,
an empty or many-sample vector, a non-number) is a measurement in phase ``error``: the
analysis run retries it at the next interval and counts a few in a row as a failure
(``gitorch.analysis.run``).
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from gitorch.analysis.condition import ConditionSyntaxError, parse_condition
from gitorch.analysis.evaluate import Measurement, MeasurementPhase
from gitorch.errors import GitorchError
from gitorch.manifests.model import PrometheusQuery

DEFAULT_TIMEOUT = 5.0
_PLACEHOLDER = re.compile(r"\{\{\s*(version|service)\s*\}\}")


class PrometheusQueryFailed(GitorchError):
    """A Prometheus query gave no usable number (unreachable, error, empty, ambiguous)."""


def _label_value(text: str) -> str:
    """Escape for the inside of a PromQL double-quoted string (digests and DNS names need
    none, but a query must not change meaning whatever it is given)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


def render_query(query: str, *, version: str, service: str) -> str:
    """``query`` with ``{{version}}`` / ``{{service}}`` (spaces inside allowed) replaced."""
    values = {"version": _label_value(version), "service": _label_value(service)}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], query)


def _sample_value(pair: Any) -> float:
    if not isinstance(pair, list) or len(pair) != 2:
        raise PrometheusQueryFailed(f"unexpected sample {pair!r}")
    try:
        return float(pair[1])
    except (TypeError, ValueError) as exc:
        raise PrometheusQueryFailed(f"sample value {pair[1]!r} is not a number") from exc


def parse_response(body: bytes) -> float:
    """The one number an /api/v1/query answer holds (raises PrometheusQueryFailed)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise PrometheusQueryFailed("the answer is not JSON") from exc
    if not isinstance(doc, dict):
        raise PrometheusQueryFailed("the answer is not a JSON object")
    if doc.get("status") != "success":
        raise PrometheusQueryFailed(
            f"query failed: {doc.get('errorType', 'error')}: {doc.get('error', '?')}"
        )
    data = doc.get("data")
    if not isinstance(data, dict):
        raise PrometheusQueryFailed("the answer has no data")
    kind = data.get("resultType")
    result = data.get("result")
    if kind == "scalar":
        return _sample_value(result)
    if kind == "vector" and isinstance(result, list):
        if len(result) != 1:
            raise PrometheusQueryFailed(
                f"the query returned {len(result)} samples; it must return exactly one "
                "(aggregate it, e.g. sum(...))"
            )
        sample = result[0]
        return _sample_value(sample.get("value") if isinstance(sample, dict) else None)
    raise PrometheusQueryFailed(f"result type {kind!r}: want a scalar or a one-sample vector")


def query_value(address: str, query: str, *, timeout: float = DEFAULT_TIMEOUT) -> float:
    """Run an instant query and return its one number (raises PrometheusQueryFailed)."""
    parsed = urllib.parse.urlsplit(address)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise PrometheusQueryFailed(f"prometheus address {address!r} is not an http(s) URL")
    url = address.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) checked above
            body = response.read()
    except urllib.error.HTTPError as exc:
        # Prometheus explains a bad query in the JSON body of its 400/422 answer.
        body = exc.read()
        try:
            return parse_response(body)
        except PrometheusQueryFailed as inner:
            raise PrometheusQueryFailed(f"HTTP {exc.code}: {inner}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PrometheusQueryFailed(f"prometheus at {address} did not answer: {reason}") from exc
    return parse_response(body)


def measure_prometheus(
    spec: PrometheusQuery, *, version: str, service: str, timeout: float = DEFAULT_TIMEOUT
) -> Measurement:
    """One measurement: query, then judge ``result`` by ``successCondition``.

    Never raises for a Prometheus or condition problem: those are phase ``error``
    measurements (a condition that does not parse is caught by validation before this).
    """
    query = render_query(spec.query, version=version, service=service)
    value: dict[str, object] = {"query": query}
    try:
        condition = parse_condition(spec.success_condition)
        result = query_value(spec.address, query, timeout=timeout)
    except (PrometheusQueryFailed, ConditionSyntaxError) as exc:
        return Measurement(MeasurementPhase.ERROR, value, f"prometheus: {exc.message}")
    value["result"] = None if math.isnan(result) else result
    verdict = "meets" if condition.holds(result) else "does not meet"
    phase = MeasurementPhase.SUCCESSFUL if verdict == "meets" else MeasurementPhase.FAILED
    return Measurement(phase, value, f"prometheus result {result:g} {verdict} `{condition.text}`")
