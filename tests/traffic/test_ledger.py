"""VersionLedger (per-version totals that only grow) and the JSON wire forms (pure)."""

from __future__ import annotations

from types import MappingProxyType

from gitorch.traffic.figures import BackendFigures, bucket_of, empty_histogram
from gitorch.traffic.ledger import VersionLedger
from gitorch.traffic.table import Backend, Route, RoutingTable, TlsFiles, VersionRule
from gitorch.traffic.wire import (
    backend_figures_from_json,
    backend_figures_to_json,
    table_from_json,
    table_to_json,
    version_figures_from_json,
    version_figures_to_json,
)


def served(backend_id: str, version: str, requests: int, errors: int = 0) -> BackendFigures:
    latency = empty_histogram()
    latency[bucket_of(4.0)] = requests
    return BackendFigures(
        backend_id, version, 0, requests, errors, 0, tuple(latency), 4.0 * requests
    )


def test_totals_keep_what_a_departed_backend_counted() -> None:
    ledger = VersionLedger()
    ledger.observe("web", [served("a", "v1", 10), served("b", "v1", 5)])
    ledger.depart("web", [served("a", "v1", 12)])  # its last figures, then it is gone
    totals = ledger.versions("web", [served("b", "v1", 8), served("c", "v2", 3, errors=1)])
    assert (totals["v1"].requests, totals["v1"].backends) == (20, 1)
    assert (totals["v2"].requests, totals["v2"].errors_5xx) == (3, 1)
    assert sum(totals["v1"].latency) == 20 and totals["v1"].epoch == ledger.epoch
    # A backend's counters going backwards (a restarted worker) never subtract.
    assert ledger.versions("web", [served("b", "v1", 2)])["v1"].requests == 20
    # A weighted version without backends yet is listed at zero.
    assert ledger.versions("web", [], ["v3"])["v3"].requests == 0
    ledger.keep_routes(["other"])
    assert ledger.versions("web", []) == {}


def test_a_successor_takes_the_totals_epoch_and_start_over() -> None:
    old = VersionLedger()
    old.observe("web", [served("a", "v1", 10)])
    new = VersionLedger()
    new.take_over(old.to_json())
    assert (new.epoch, new.since) == (old.epoch, old.since)
    # Its own backends count from zero (a successor proxy's workers start afresh).
    assert new.versions("web", [served("a", "v1", 4)])["v1"].requests == 14
    # With the per-backend memory (an adopted HAProxy: the same counters), nothing twice.
    same = VersionLedger()
    same.take_over(old.to_json(backends=True))
    assert same.versions("web", [served("a", "v1", 15)])["v1"].requests == 15


def test_tables_and_figures_survive_json() -> None:
    route = Route(
        "web",
        8000,
        "http",
        (Backend("a", "127.0.0.1:1", "v1", 50, draining=True), Backend("b", "[::1]:2", "v2")),
        weights=MappingProxyType({"v1": 90, "v2": 10}),
        rules=(VersionRule("v2", header="x-canary", regex="on|yes"),),
        sticky=True,
        tls=TlsFiles("/s/web.pem", "/s/web.key"),
    )
    table = RoutingTable(MappingProxyType({"web": route, "db": Route("db", 5432, "tcp")}))
    again = table_from_json(table_to_json(table))
    assert again == table
    figures = served("a", "v1", 7, errors=2)
    assert backend_figures_from_json(backend_figures_to_json(figures)) == figures
    version = VersionLedger().versions("web", [figures])["v1"]
    assert version_figures_from_json(version_figures_to_json(version)) == version
