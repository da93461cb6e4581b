"""Progressive delivery in the built-in load balancer: version weights, header/cookie
rules, stickiness, fallback, per-version figures (real sockets, real backend processes)."""

from __future__ import annotations

import http.client
import socket
from collections import Counter
from types import MappingProxyType

import pytest
from traffic_helpers import App, Apps, free_port, get, table, wait_until

from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer
from gitorch.traffic.choice import Candidate, Chooser
from gitorch.traffic.routes import RouteInvalid
from gitorch.traffic.table import Backend, Route, VersionRule


def versioned_route(
    port: int,
    apps: list[App],
    weights: dict[str, int],
    *,
    rules: tuple[VersionRule, ...] = (),
    sticky: bool = False,
    protocol: str = "http",
) -> Route:
    return Route(
        "svc",
        port,
        protocol,
        tuple(a.backend for a in apps),
        weights=MappingProxyType(dict(weights)),
        rules=rules,
        sticky=sticky,
    )


def version_of(body: bytes) -> str:
    return body.decode().split("version=")[1].split()[0]


def ask(
    conn: http.client.HTTPConnection, headers: dict[str, str] | None = None
) -> tuple[int, str, http.client.HTTPResponse]:
    conn.request("GET", "/", headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, version_of(body) if resp.status == 200 else "", resp


def two_versions(apps: Apps, each: int = 2) -> tuple[list[App], list[App]]:
    old = [apps.start("ka", version="old") for _ in range(each)]
    new = [apps.start("ka", version="new") for _ in range(each)]
    return old, new


# ----------------------------------------------------------------------- pure


def pure_service(weights: dict[str, int], versions: dict[str, int]) -> Chooser[Candidate]:
    backends = tuple(
        Backend(f"{v}{i}", f"127.0.0.1:{2000 + n * 10 + i}", version=v)
        for n, (v, count) in enumerate(versions.items())
        for i in range(count)
    )
    svc = Chooser(Route("s", 80, "http", ()), Candidate)
    svc.set_route(Route("s", 80, "http", backends, weights=MappingProxyType(weights)))
    return svc


def test_weighted_versions_are_exact_per_cycle_and_interleaved() -> None:
    svc = pure_service({"a": 10, "b": 90}, {"a": 1, "b": 3})
    picks = [svc.choose_version(None)[0] for _ in range(100)]
    assert Counter(picks) == {"a": 10, "b": 90}
    # Smooth: the 10 "a" picks are spread out, never two in a row.
    assert all(not (x == y == "a") for x, y in zip(picks, picks[1:], strict=False))


def test_version_without_backend_and_no_weighted_backend_fall_back() -> None:
    svc = pure_service({"a": 50, "gone": 50}, {"a": 1, "c": 1})
    assert {svc.choose_version(None)[0] for _ in range(10)} == {"a"}
    # No weighted version has a backend: None means "any active backend".
    lost = pure_service({"gone": 100}, {"c": 2})
    assert lost.choose_version(None) == (None, None)
    assert lost.pick(set(), None, now=0.0) is not None


def test_bad_rule_or_weight_is_refused_before_anything_changes(
    lb: BuiltinLoadBalancer, apps: Apps
) -> None:
    app = apps.start("ka", version="old")
    port = free_port()
    bad_regex = versioned_route(
        port, [app], {"old": 100}, rules=(VersionRule("old", header="x", regex="(["),)
    )
    with pytest.raises(RouteInvalid, match="bad rule regex"):
        lb.apply(table(bad_regex))
    with pytest.raises(RouteInvalid, match="exactly one of header or cookie"):
        lb.apply(table(versioned_route(port, [app], {}, rules=(VersionRule("old"),))))
    with pytest.raises(RouteInvalid, match=">= 0"):
        lb.apply(table(versioned_route(port, [app], {"old": -1})))
    assert lb.endpoints() == {}


# ----------------------------------------------------------------------- over sockets


def test_weights_10_90_split_requests_within_5_points(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    old, new = two_versions(apps)
    port = free_port()
    lb.apply(table(versioned_route(port, old + new, {"old": 90, "new": 10})))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    versions: Counter[str] = Counter()
    for _ in range(400):
        status, version, _ = ask(conn)
        assert status == 200
        versions[version] += 1
    conn.close()
    assert abs(versions["new"] / 400 - 0.10) <= 0.05, versions
    figures = lb.version_figures("svc")
    assert figures["new"].requests == versions["new"] and figures["old"].requests == versions["old"]
    # Round robin inside a version: both "new" backends served.
    per_backend = {f.backend_id: f.requests for f in lb.figures("svc")}
    assert all(per_backend[a.id] > 0 for a in new), per_backend


def test_header_and_cookie_rules_send_only_matching_requests_to_new(
    lb: BuiltinLoadBalancer, apps: Apps
) -> None:
    old, new = two_versions(apps, each=1)
    port = free_port()
    rules = (
        VersionRule("new", header="X-Variant", exact="b"),
        VersionRule("new", cookie="variant", regex="b[0-9]+"),
    )
    lb.apply(table(versioned_route(port, old + new, {"old": 100, "new": 0}, rules=rules)))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    matching = [
        {"x-variant": "b"},  # header names are case-insensitive
        {"X-VARIANT": "b"},
        {"Cookie": "a=1; variant=b42"},
        {"Cookie": "variant=b7"},
    ]
    others = [
        {},
        {"X-Variant": "B"},  # values are exact
        {"X-Variant": "bb"},
        {"Cookie": "variant=b"},  # regex is a full match: b[0-9]+ needs a digit
        {"Cookie": "variant=b42x"},
        {"Cookie": "xvariant=b42"},
        {"X-Other": "b"},
    ]
    for _ in range(10):
        for headers in matching:
            assert ask(conn, headers)[:2] == (200, "new"), headers
        for headers in others:
            assert ask(conn, headers)[:2] == (200, "old"), headers
    conn.close()
    figures = lb.version_figures("svc")
    assert figures["new"].requests == 40 and figures["old"].requests == 70


def test_rule_to_a_version_without_backend_falls_back(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    (old,) = [apps.start("ka", version="old")]
    port = free_port()
    rules = (VersionRule("new", header="X-Variant", exact="b"),)
    lb.apply(table(versioned_route(port, [old], {"old": 0, "new": 100}, rules=rules)))
    for headers in ({"X-Variant": "b"}, {}):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        assert ask(conn, headers)[:2] == (200, "old")
        conn.close()


def test_sticky_keeps_a_client_on_its_version_while_its_weight_is_above_zero(
    lb: BuiltinLoadBalancer, apps: Apps
) -> None:
    old, new = two_versions(apps, each=1)
    port = free_port()
    lb.apply(table(versioned_route(port, old + new, {"old": 50, "new": 50}, sticky=True)))
    clients: dict[str, str] = {}  # cookie -> version it was first given
    for _ in range(20):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        status, version, resp = ask(conn)
        conn.close()
        cookie = resp.getheader("Set-Cookie") or ""
        assert status == 200 and cookie == f"gitorch_v_svc={version}; Path=/"
        clients[cookie.split(";")[0]] = version
    assert set(clients.values()) == {"old", "new"}  # the first answers follow the weights
    for cookie, version in clients.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for _ in range(10):
            status, got, resp = ask(conn, {"Cookie": cookie})
            assert (status, got) == (200, version)
            assert resp.getheader("Set-Cookie") is None  # already carries the right one
        conn.close()
    # The new version's weight drops to 0: its sticky clients move, and learn it.
    lb.apply(table(versioned_route(port, old + new, {"old": 100, "new": 0}, sticky=True)))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    status, got, resp = ask(conn, {"Cookie": "gitorch_v_svc=new"})
    assert (status, got) == (200, "old")
    assert resp.getheader("Set-Cookie") == "gitorch_v_svc=old; Path=/"
    conn.close()


def test_weighted_version_without_backend_gets_no_503(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    old = [apps.start("ka", version="old")]
    draining_new = apps.start("ka", version="new")
    port = free_port()
    backends = [*old, draining_new]
    route = versioned_route(port, backends, {"old": 10, "new": 90})
    # "new" has weight 90 but its only backend drains: every request goes to "old".
    drained = tuple(
        Backend(b.id, b.address, b.version, draining=b.version == "new")
        for b in (a.backend for a in backends)
    )
    lb.apply(table(Route("svc", port, "http", drained, weights=route.weights)))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    assert Counter(ask(conn)[:2] for _ in range(50)) == {(200, "old"): 50}
    conn.close()
    # No weighted version has a backend at all: any active backend serves.
    other = apps.start("ka", version="other")
    lb.apply(table(versioned_route(port, [other], {"old": 10, "new": 90})))
    assert get(port)[0] == 200


def test_tcp_weights_per_connection(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    old = apps.start("tcp_echo", version="old")
    new = apps.start("tcp_echo", version="new")
    port = free_port()
    lb.apply(table(versioned_route(port, [old, new], {"old": 75, "new": 25}, protocol="tcp")))
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping\n")
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
    # The client is done before the proxy's splice tasks have counted the last close.
    wait_until(lambda: all(f.in_flight == 0 for f in lb.version_figures("svc").values()))
    figures = lb.version_figures("svc")
    assert figures["old"].requests == 30 and figures["new"].requests == 10


def test_version_figures_expose_what_analysis_reads(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    old, new = two_versions(apps, each=1)
    port = free_port()
    lb.apply(table(versioned_route(port, old + new, {"old": 50, "new": 50})))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(10):
        conn.request("GET", "/slow?ms=20")
        conn.getresponse().read()
    before = lb.version_figures("svc")
    for _ in range(4):
        conn.request("GET", "/status?code=500")
        conn.getresponse().read()
    after = lb.version_figures("svc")
    conn.close()
    window = after["new"].since(before["new"])
    assert window.requests == 2 and window.errors_5xx == 2 and window.success_rate == 0.0
    total = after["old"]
    assert total.requests == 7 and total.success_rate == pytest.approx(5 / 7)
    assert total.open_connections == 0 and total.backends == 1
    # Lower bounds are certain (the backend sleeps 20 ms on 5 of 7); upper ones loose.
    assert 15 <= (total.p90 or 0) <= (total.p99 or 0) <= 2000
    assert total.p50 is not None and total.mean_ms is not None and total.mean_ms >= 10
    assert lb.version_figures("unknown") == {}
