"""The Prometheus provider against a real Prometheus server scraping an exporter we serve.

The ``prometheus`` binary (Debian package ``prometheus``) must be installed: without it
these tests FAIL, they do not skip.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from listen_ports import free_port
from prometheus_helpers import running_prometheus

from gitorch.analysis.evaluate import MeasurementPhase
from gitorch.analysis.measure import measure
from gitorch.analysis.prometheus import (
    PrometheusQueryFailed,
    measure_prometheus,
    parse_response,
    query_value,
    render_query,
)
from gitorch.manifests.model import Analysis, PrometheusQuery

EXPOSITION = b"""# TYPE demo_errors gauge
demo_errors{version="aaa111",service="web"} 0.25
demo_errors{version="bbb222",service="web"} 3
# TYPE demo_requests counter
demo_requests_total 42
"""


class _Exporter(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(EXPOSITION)))
        self.end_headers()
        self.wfile.write(EXPOSITION)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@dataclass(frozen=True)
class Prom:
    address: str


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prom]:
    exporter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=exporter.serve_forever, daemon=True)
    thread.start()
    work: Path = tmp_path_factory.mktemp("prometheus")
    target = f"127.0.0.1:{exporter.server_address[1]}"
    try:
        with running_prometheus(work, [target], ready_query="demo_requests_total") as address:
            yield Prom(address)
    finally:
        exporter.shutdown()
        exporter.server_close()


def spec(prom: Prom, query: str, condition: str = "result < 1") -> PrometheusQuery:
    return PrometheusQuery(address=prom.address, query=query, success_condition=condition)


def test_single_sample_vector(prom: Prom) -> None:
    assert query_value(prom.address, "demo_requests_total") == 42.0


def test_scalar_result(prom: Prom) -> None:
    assert query_value(prom.address, "scalar(demo_requests_total) / 2") == 21.0


def test_version_substituted_and_condition_judged(prom: Prom) -> None:
    query = 'sum(demo_errors{version="{{version}}", service="{{ service }}"})'
    good = measure_prometheus(spec(prom, query), version="aaa111", service="web")
    assert good.phase is MeasurementPhase.SUCCESSFUL, good.message
    assert good.value["result"] == 0.25
    assert good.value["query"] == 'sum(demo_errors{version="aaa111", service="web"})'
    bad = measure_prometheus(spec(prom, query), version="bbb222", service="web")
    assert bad.phase is MeasurementPhase.FAILED
    assert "does not meet `result < 1`" in bad.message
    both = measure_prometheus(
        spec(prom, query, "result >= 0 and result < 5"), version="bbb222", service="web"
    )
    assert both.phase is MeasurementPhase.SUCCESSFUL


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("demo_errors", "returned 2 samples"),
        ('demo_errors{version="zzz"}', "returned 0 samples"),
        ("sum(", "HTTP 400"),
        ("demo_errors[1m]", "result type 'matrix'"),
    ],
)
def test_unusable_answers_are_errors(prom: Prom, query: str, says: str) -> None:
    with pytest.raises(PrometheusQueryFailed) as info:
        query_value(prom.address, query)
    assert says in info.value.message
    measured = measure_prometheus(spec(prom, query), version="aaa111", service="web")
    assert measured.phase is MeasurementPhase.ERROR
    assert says in measured.message


def test_measure_combines_with_the_builtin_figures(prom: Prom) -> None:
    from analysis_helpers import window

    query = 'sum(demo_errors{version="{{version}}"})'
    analysis = Analysis(success_rate=None, prometheus=spec(prom, query))
    assert measure(analysis, window(50, version="aaa111"), service="web").phase is (
        MeasurementPhase.SUCCESSFUL
    )
    # Prometheus fine, but too little traffic: never passes.
    few = measure(analysis, window(3, version="aaa111"), service="web")
    assert few.phase is MeasurementPhase.INCONCLUSIVE
    failed = measure(analysis, window(50, version="bbb222"), service="web")
    assert failed.phase is MeasurementPhase.FAILED
    assert failed.value["result"] == 3.0 and failed.value["requests"] == 50


def test_unreachable_server_is_an_error() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    measured = measure_prometheus(
        PrometheusQuery(address, "up", "result == 1"), version="v", service="web", timeout=2
    )
    assert measured.phase is MeasurementPhase.ERROR
    assert "did not answer" in measured.message
    assert time.monotonic() - started < 2


def test_silent_server_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(PrometheusQueryFailed, match="did not answer"):
            query_value(address, "up", timeout=0.5)
        assert 0.4 <= time.monotonic() - started < 3


@pytest.mark.parametrize("address", ["file:///etc/passwd", "ftp://x", "127.0.0.1:9090", ""])
def test_only_http_addresses(address: str) -> None:
    with pytest.raises(PrometheusQueryFailed, match="not an http"):
        query_value(address, "up")


def test_render_query_escapes_label_values() -> None:
    assert render_query('x{v="{{version}}"}', version='a"b\\', service="s") == 'x{v="a\\"b\\\\"}'
    assert render_query("{{service}}/{{  version }}", version="v", service="web") == "web/v"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"status": "error", "errorType": "bad_data", "error": "parse error"}',
        b'{"status": "success"}',
        b'{"status": "success", "data": {"resultType": "scalar", "result": [1, "x"]}}',
        b'{"status": "success", "data": {"resultType": "string", "result": [1, "x"]}}',
    ],
)
def test_parse_response_rejects_what_is_not_one_number(body: bytes) -> None:
    with pytest.raises(PrometheusQueryFailed):
        parse_response(body)


def test_parse_response_nan() -> None:
    body = b'{"status": "success", "data": {"resultType": "scalar", "result": [1, "NaN"]}}'
    value = parse_response(body)
    assert value != value  # NaN
