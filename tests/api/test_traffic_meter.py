"""TrafficMeter (a data plane's per-version totals with weights and revisions) and the
gitorch_lb_* exposition, on backend figures a test sets, folded by the real ledger."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from api_helpers import parse_prometheus

from gitorch.api.metrics import Metrics
from gitorch.api.traffic import TrafficMeter
from gitorch.api.traffic_metrics import TrafficCollector
from gitorch.traffic.figures import BackendFigures, VersionFigures, bucket_of, empty_histogram
from gitorch.traffic.ledger import VersionLedger, weights_in_force
from gitorch.traffic.table import Backend, Route, RoutingTable

V1, V2 = "aaaaaaaaaaaa", "bbbbbbbbbbbb"


class Plane:
    """Backend figures a test sets, folded per version by a real VersionLedger as a data
    plane does (a backend removed without a last look takes what was not read with it)."""

    def __init__(self) -> None:
        self.backends: dict[str, BackendFigures] = {}
        self.ledger = VersionLedger()

    def serve(self, backend_id: str, version: str, ms: float, status: int = 200) -> None:
        old = self.backends.get(backend_id)
        latency = list(old.latency) if old else empty_histogram()
        latency[bucket_of(ms)] += 1
        self.backends[backend_id] = BackendFigures(
            backend_id=backend_id,
            version=version,
            in_flight=0,
            requests=(old.requests if old else 0) + 1,
            errors_5xx=(old.errors_5xx if old else 0) + (status >= 500),
            connect_errors=0,
            latency=tuple(latency),
            latency_sum_ms=(old.latency_sum_ms if old else 0.0) + ms,
        )

    def version_figures(self, route: str) -> dict[str, VersionFigures]:
        current = list(self.backends.values()) if route == "web" else []
        return self.ledger.versions(route, current)


def _table(weights: Mapping[str, int], *versions: str) -> RoutingTable:
    backends = tuple(Backend(f"id-{v}", "127.0.0.1:1", version=v) for v in versions)
    route = Route("web", 8080, "http", backends, weights=MappingProxyType(dict(weights)))
    return RoutingTable(MappingProxyType({"web": route}))


def test_totals_never_decrease_when_a_backend_leaves() -> None:
    plane = Plane()
    table = [_table({V1: 80, V2: 20}, V1, V2)]
    meter = TrafficMeter(
        plane.version_figures, lambda: table[0], lambda _: {V1: "1" * 40}, data_plane="fake"
    )
    for _ in range(8):
        plane.serve("id-v1", V1, 2.0)
    plane.serve("id-v2", V2, 40.0, status=500)
    plane.serve("id-v2", V2, 40.0)
    first = {v.version: v for v in meter.read().routes["web"]}
    assert (first[V1].requests, first[V2].requests, first[V2].errors_5xx) == (8, 2, 1)
    assert (first[V1].weight, first[V2].weight) == (80, 20)
    assert first[V1].revision == "1" * 40 and first[V2].revision == ""

    # The old version's backend leaves (its counts leave the plane's sums), and the new
    # one serves on: the totals keep what was counted and add only what is new.
    del plane.backends["id-v1"]
    table[0] = _table({}, V2)
    plane.serve("id-v2", V2, 3.0)
    second = {v.version: v for v in meter.read().routes["web"]}
    assert second[V1].requests == 8 and second[V1].backends == 0 and second[V1].weight == 0
    assert second[V2].requests == 3 and second[V2].weight == 100
    # status shows the versions that serve; /metrics keeps the others' series.
    (snapshot,) = meter.read().snapshots()
    assert [v.version for v in snapshot.versions] == [V2]


def test_exposition_is_valid_with_cumulative_buckets() -> None:
    plane = Plane()
    meter = TrafficMeter(
        plane.version_figures, lambda: _table({}, V1), lambda _: {V1: "1" * 40}, data_plane="fake"
    )
    for ms in (0.5, 4.0, 4.0, 60.0, 120_000.0):
        plane.serve("id-v1", V1, ms, status=503 if ms > 100 else 200)
    metrics = Metrics()
    metrics.add_collector(TrafficCollector(meter.read))
    families = parse_prometheus(metrics.render())  # checks histograms too
    labels = {"service": "web", "version": V1, "revision": "1" * 40}
    requests = families["gitorch_lb_requests_total"].samples
    assert requests == [("gitorch_lb_requests_total", labels, 5.0)]
    responses = {s[1]["code_class"]: s[2] for s in families["gitorch_lb_responses_total"].samples}
    assert responses == {"5xx": 1.0, "other": 4.0}
    buckets = {
        float(s[1]["le"]): s[2]
        for s in families["gitorch_lb_request_duration_seconds"].samples
        if s[0].endswith("_bucket")
    }
    assert buckets[0.001] == 1 and buckets[0.005] == 3 and buckets[0.075] == 4
    assert buckets[60.0] == 4 and buckets[math.inf] == 5
    sums = {s[0]: s[2] for s in families["gitorch_lb_request_duration_seconds"].samples}
    assert sums["gitorch_lb_request_duration_seconds_count"] == 5
    assert math.isclose(sums["gitorch_lb_request_duration_seconds_sum"], 120.0685)
    assert families["gitorch_lb_weight_percent"].samples[0][2] == 100


def test_weights_without_a_table_split_by_active_backends() -> None:
    backends = (
        Backend("a", "h:1", version=V1),
        Backend("b", "h:2", version=V1),
        Backend("c", "h:3", version=V1, draining=True),
        Backend("d", "h:4", version=V2),
    )
    route = Route("web", 1, "http", backends)
    assert weights_in_force(route) == {V1: 67, V2: 33}
    assert weights_in_force(Route("web", 1)) == {}


def test_status_says_when_no_figures_are_stored() -> None:
    """Without a snapshot, status says so (never an empty table that looks like no traffic)."""
    from rich.console import Console

    from gitorch.commands.status import render_traffic as render_status_traffic
    from gitorch.state import TrafficSnapshot, VersionTraffic

    console = Console(record=True, width=80, no_color=True)
    render_status_traffic(console, None, "traffic")
    snap = TrafficSnapshot(
        "web", 100.0, 0.0, "haproxy", (VersionTraffic(V1, None, 100, 1, 7, 1, 0, 1.0, 2.0, 3.0),)
    )
    render_status_traffic(console, snap.to_json(now=225.0), "traffic")
    text = console.export_text()
    assert "traffic: no figures stored yet" in text
    assert "traffic (haproxy, as of 2 m ago; 7 requests" in text
    row = next(line.split() for line in text.splitlines() if line.startswith(V1))
    assert row[1:7] == ["-", "100%", "100.0%", "7", "1", "85.7%"]


def test_a_read_that_hangs_gives_way_to_the_last_reading() -> None:
    """A status or a scrape (read with ``wait``) does not wait out a data plane that
    stopped answering: it gets the last reading, and readers meanwhile join the one read
    under way instead of starting more."""
    plane = Plane()
    plane.serve("id-v1", V1, 2.0)
    hang = threading.Event()
    calls: list[str] = []

    def versions(route: str) -> dict[str, VersionFigures]:
        calls.append(route)
        if hang.is_set():
            released.wait(timeout=10)
        return plane.version_figures(route)

    released = threading.Event()
    meter = TrafficMeter(versions, lambda: _table({V1: 100}, V1), lambda _: {}, data_plane="fake")
    first = meter.read(wait=1.0)
    assert first.routes["web"][0].requests == 1 and calls == ["web"]

    plane.serve("id-v1", V1, 2.0)
    hang.set()
    started = time.monotonic()
    stale = meter.read(wait=0.2)
    again = meter.read(wait=0.2)
    assert time.monotonic() - started < 1.0
    assert stale is first and again is first, "the last reading, while the read hangs"
    assert calls == ["web", "web"], "the second reader joined the read under way"

    hang.clear()
    released.set()
    assert _eventually(lambda: meter.read(wait=1.0).routes["web"][0].requests == 2)


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()
