"""HAProxy: real p50/p90/p99 per version, from HAProxy's own request log.

A real haproxy logs each request (asynchronously, over UDP) to the data plane's reader,
which buckets the connect + response time per backend. One version answers 5% of its
requests after 60 ms: its p99 must show it while its mean and p90 stay low, the other
version's p99 must not, and an analysis with maxLatencyP99 must fail the slow one on these
figures (no longer judged by a mean).
"""

from __future__ import annotations

import http.client
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from traffic_helpers import Apps, free_port, table, wait_until

from gitorch.analysis.evaluate import MeasurementPhase, evaluate
from gitorch.manifests.model import Analysis
from gitorch.traffic.figures import VersionFigures
from gitorch.traffic.haproxy import HAProxyDataPlane, LatencyLog
from gitorch.traffic.table import Backend, Route, RoutingTable, VersionRule

SLOW_MS = 60  # above the 50 ms bucket bound, so the p99 cannot interpolate below 50
REQUESTS = 400  # per version; 5% slow = 20 requests, 1.2 s in all


@pytest.fixture
def hap(tmp_path: Path) -> Iterator[HAProxyDataPlane]:
    assert shutil.which("haproxy"), "haproxy is not installed (apt-get install -y haproxy)"
    plane = HAProxyDataPlane(tmp_path / "haproxy", slots_per_version=2)
    try:
        yield plane
    finally:
        plane.close()


def two_versions(port: int, apps: Apps, *, rules: int = 1) -> RoutingTable:
    """Version 1 takes the weighted traffic; ``X-V: 2`` requests go to version 2."""
    started = [apps.start("ka", version=v) for v in ("1", "1", "2")]
    return table(route_of(port, tuple(a.backend for a in started), rules))


def route_of(port: int, backends: tuple[Backend, ...], rules: int) -> Route:
    """``backends`` behind one port; ``rules`` - 1 extra rules (each one is a reload)."""
    extra = tuple(VersionRule("2", header=f"X-Extra{i}", exact="1") for i in range(rules - 1))
    return Route(
        "svc",
        port,
        "http",
        backends,
        weights=MappingProxyType({"1": 100, "2": 0}),
        rules=(VersionRule("2", header="X-V", exact="2"), *extra),
    )


def send(port: int, count: int, headers: dict[str, str], slow_every: int = 0) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for n in range(count):
            path = f"/slow?ms={SLOW_MS}" if slow_every and n % slow_every == 0 else "/"
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
    finally:
        conn.close()


def logged(hap: HAProxyDataPlane, version: str, total: int) -> VersionFigures:
    """``version``'s figures once the log has brought ``total`` samples."""

    def caught_up() -> bool:
        return sum(hap.version_figures("svc")[version].latency) >= total

    wait_until(caught_up, what=f"{total} latency samples for version {version}")
    return hap.version_figures("svc")[version]


def test_a_slow_tail_shows_in_p99_not_in_the_mean(hap: HAProxyDataPlane, apps: Apps) -> None:
    port = free_port()
    hap.apply(two_versions(port, apps))
    send(port, REQUESTS, {})
    send(port, REQUESTS, {"X-V": "2"}, slow_every=20)
    fast, slow = logged(hap, "1", REQUESTS), logged(hap, "2", REQUESTS)
    assert (fast.requests, slow.requests) == (REQUESTS, REQUESTS)
    assert slow.p99 is not None and slow.p99 >= 50, slow.latency
    # The other 95% look like the fast version measured in the same run (a loaded machine
    # slows both): the tail is in p99 only, and the mean hides it.
    assert fast.p90 is not None, fast.latency
    assert slow.p90 is not None and slow.p90 <= max(2 * fast.p90, 10) < 50, slow.latency
    assert slow.mean_ms is not None and slow.mean_ms < slow.p99 / 4, slow.mean_ms
    assert fast.p99 is not None and fast.p99 < 50, fast.latency
    assert hap.dropped_log_lines == 0
    log = hap.latency_log
    assert log is not None and log.unattributed == 0


def test_analysis_judges_the_real_p99_over_a_window(hap: HAProxyDataPlane, apps: Apps) -> None:
    port = free_port()
    hap.apply(two_versions(port, apps))
    send(port, 100, {"X-V": "2"})  # before the window: fast
    earlier = logged(hap, "2", 100)
    send(port, REQUESTS, {"X-V": "2"}, slow_every=20)
    window = logged(hap, "2", 100 + REQUESTS).since(earlier)
    assert sum(window.latency) == window.requests == REQUESTS
    limit = Analysis(min_requests=50, success_rate=0.99, max_latency_p99_seconds=0.05)
    verdict = evaluate(limit, window)
    assert verdict.phase is MeasurementPhase.FAILED, verdict
    assert "p99 latency" in verdict.message and "mean" not in verdict.message, verdict.message
    assert evaluate(Analysis(min_requests=50, max_latency_p99_seconds=0.2), window).phase is (
        MeasurementPhase.SUCCESSFUL
    )


def test_histograms_outlive_a_reload(hap: HAProxyDataPlane, apps: Apps) -> None:
    port = free_port()
    first = two_versions(port, apps)
    hap.apply(first)
    send(port, 50, {"X-V": "2"})
    logged(hap, "2", 50)
    reloads = hap.reloads
    hap.apply(table(route_of(port, first.routes["svc"].backends, rules=2)))  # a reload
    assert hap.reloads == reloads + 1
    send(port, 50, {"X-V": "2"})
    assert sum(logged(hap, "2", 100).latency) == 100


def test_lines_dropped_while_the_reader_lags_are_counted(
    tmp_path: Path, apps: Apps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small receive buffer and a reader held up: HAProxy drops what does not fit and
    # counts it; nothing waits, and every line is either bucketed or counted as dropped.
    held, release = threading.Event(), threading.Event()
    take = LatencyLog._take

    def slow_take(self: LatencyLog, data: bytes) -> None:
        held.set()
        release.wait(10)
        take(self, data)

    monkeypatch.setattr(LatencyLog, "_take", slow_take)
    with HAProxyDataPlane(tmp_path / "haproxy", slots_per_version=2, log_buffer=4096) as hap:
        port = free_port()
        hap.apply(two_versions(port, apps))
        send(port, 200, {})
        assert held.is_set()
        release.set()
        log = hap.latency_log
        assert log is not None
        # Read again each time: HAProxy logs after it answers, so the last lines may be
        # sent (and dropped) after the client got its last response.
        wait_until(
            lambda: log.lines + hap.dropped_log_lines >= 200,
            what=f"every line read or dropped ({hap.dropped_log_lines} dropped,"
            f" {log.lines} read, {log.ignored} ignored, {log.unattributed} unattributed)",
        )
        dropped = hap.dropped_log_lines
        assert 0 < dropped < 200 and log.lines + dropped == 200, (dropped, log.lines)


def test_without_the_request_log_there_are_counts_but_no_percentiles(
    tmp_path: Path, apps: Apps
) -> None:
    plane = HAProxyDataPlane(tmp_path / "nolog", slots_per_version=2, request_log=False)
    try:
        port = free_port()
        plane.apply(two_versions(port, apps))
        send(port, 50, {})
        assert "log-format" not in plane.config_path.read_text()
        assert plane.latency_log is None
        wait_until(lambda: plane.version_figures("svc")["1"].requests == 50, what="50 counted")
        assert plane.version_figures("svc")["1"].p99 is None
    finally:
        plane.close()
