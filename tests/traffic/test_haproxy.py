"""HAProxy as the data plane: a real haproxy (Debian's 2.6) in master-worker mode, real
backend processes. A missing haproxy makes these tests fail, not skip."""

from __future__ import annotations

import http.client
import shutil
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
from test_rollout_load import roll
from traffic_helpers import App, Apps, Load, free_port, get, table, wait_until

from gitorch.traffic.haproxy import HAProxyConfigInvalid, HAProxyDataPlane
from gitorch.traffic.routes import ListenError
from gitorch.traffic.table import Route, VersionRule


@pytest.fixture
def hap(tmp_path: Path) -> Iterator[HAProxyDataPlane]:
    assert shutil.which("haproxy"), "haproxy is not installed (apt-get install -y haproxy)"
    plane = HAProxyDataPlane(tmp_path / "haproxy", slots_per_version=4)
    try:
        yield plane
    finally:
        plane.close()


def vroute(
    port: int,
    apps: list[App],
    weights: dict[str, int] | None = None,
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
        weights=MappingProxyType(dict(weights or {})),
        rules=rules,
        sticky=sticky,
    )


def ask(
    conn: http.client.HTTPConnection, headers: dict[str, str] | None = None
) -> tuple[int, str, http.client.HTTPResponse]:
    conn.request("GET", "/", headers=headers or {})
    resp = conn.getresponse()
    body = resp.read().decode()
    version = body.split("version=")[1].split()[0] if resp.status == 200 else ""
    return resp.status, version, resp


def test_weights_10_90_and_figures(hap: HAProxyDataPlane, apps: Apps) -> None:
    old = [apps.start("ka", version="old") for _ in range(2)]
    new = [apps.start("ka", version="new") for _ in range(2)]
    port = free_port()
    hap.apply(table(vroute(port, old + new, {"old": 90, "new": 10})))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    versions: Counter[str] = Counter()
    for _ in range(400):
        status, version, _ = ask(conn)
        assert status == 200
        versions[version] += 1
    for _ in range(3):
        conn.request("GET", "/status?code=503")
        conn.getresponse().read()
    conn.close()
    assert abs(versions["new"] / 400 - 0.10) <= 0.05, versions
    figures = hap.version_figures("svc")
    assert figures["new"].requests + figures["old"].requests == 403
    assert abs(figures["new"].requests - versions["new"]) <= 3
    assert figures["new"].errors_5xx + figures["old"].errors_5xx == 3
    assert figures["old"].recent_mean_ms is not None and figures["old"].backends == 2
    # Percentiles come from HAProxy's request log, which arrives a little after the answers.
    wait_until(
        lambda: sum(sum(f.latency) for f in hap.version_figures("svc").values()) == 403,
        what="every request in the latency histograms",
    )
    figures = hap.version_figures("svc")
    assert sum(figures["new"].latency) == figures["new"].requests
    assert figures["old"].p99 is not None and figures["old"].p99 < 50
    assert hap.dropped_log_lines == 0
    stats = hap.backend_stats("svc", old[0].id)
    assert stats is not None and stats.in_flight == 0 and stats.requests > 100
    assert hap.backend_stats("svc", "nope") is None


def test_header_and_cookie_rules(hap: HAProxyDataPlane, apps: Apps) -> None:
    old, new = apps.start("ka", version="old"), apps.start("ka", version="new")
    port = free_port()
    rules = (
        VersionRule("new", header="X-Variant", exact="b"),
        VersionRule("new", cookie="variant", regex="b[0-9]+"),
    )
    hap.apply(table(vroute(port, [old, new], {"old": 100, "new": 0}, rules=rules)))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    matching = [{"x-variant": "b"}, {"Cookie": "a=1; variant=b42"}]
    others = [
        {},
        {"X-Variant": "B"},
        {"X-Variant": "bb"},
        {"Cookie": "variant=b"},
        {"Cookie": "variant=b42x"},
        {"Cookie": "xvariant=b42"},
    ]
    for _ in range(10):
        for headers in matching:
            assert ask(conn, headers)[:2] == (200, "new"), headers
        for headers in others:
            assert ask(conn, headers)[:2] == (200, "old"), headers
    conn.close()


def test_sticky_per_version(hap: HAProxyDataPlane, apps: Apps) -> None:
    old, new = apps.start("ka", version="old"), apps.start("ka", version="new")
    port = free_port()
    hap.apply(table(vroute(port, [old, new], {"old": 50, "new": 50}, sticky=True)))
    given: dict[str, str] = {}
    for _ in range(10):
        status, version, resp = ask(http.client.HTTPConnection("127.0.0.1", port, timeout=5))
        assert status == 200 and resp.getheader("Set-Cookie") == f"gitorch_v_svc={version}; Path=/"
        given[version] = f"gitorch_v_svc={version}"
    assert set(given) == {"old", "new"}
    for version, cookie in given.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        assert {ask(conn, {"Cookie": cookie})[1] for _ in range(10)} == {version}
        conn.close()
    # Weight 0: the sticky map forgets "new" (runtime API), its clients move.
    pid = hap.worker_pid()
    hap.apply(table(vroute(port, [old, new], {"old": 100, "new": 0}, sticky=True)))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    status, version, resp = ask(conn, {"Cookie": given["new"]})
    assert (status, version) == (200, "old")
    assert resp.getheader("Set-Cookie") == "gitorch_v_svc=old; Path=/"
    conn.close()
    assert hap.worker_pid() == pid


def test_runtime_changes_do_not_reload_structural_ones_do(
    hap: HAProxyDataPlane, apps: Apps
) -> None:
    a, b = apps.start("ka", version="1"), apps.start("ka", version="1")
    port = free_port()
    hap.apply(table(vroute(port, [a])))
    pid, reloads = hap.worker_pid(), hap.reloads
    assert {get(port)[1].decode().split()[0] for _ in range(4)} == {f"id={a.id}"}
    # Add a backend, drain the first, a new version in the spare group, weights: no reload.
    hap.apply(table(vroute(port, [a, b])))
    hap.apply(table(Route("svc", port, "http", (replace(a.backend, draining=True), b.backend))))
    assert {get(port)[1].decode().split()[0] for _ in range(6)} == {f"id={b.id}"}
    c = apps.start("ka", version="2")
    hap.apply(table(vroute(port, [b, c], {"1": 50, "2": 50})))
    assert Counter(get(port)[1].decode().split()[1] for _ in range(20)) == {
        "version=1": 10,
        "version=2": 10,
    }
    assert (hap.worker_pid(), hap.reloads) == (pid, reloads)
    # A rule is structure: a reload, and the new worker serves.
    rule = (VersionRule("2", header="X-V", exact="2"),)
    hap.apply(table(vroute(port, [b, c], {"1": 100, "2": 0}, rules=rule)))
    assert hap.reloads == reloads + 1 and hap.worker_pid() != pid
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    assert ask(conn, {"X-V": "2"})[1] == "2" and ask(conn)[1] == "1"
    conn.close()


def test_invalid_config_is_refused_and_the_old_one_keeps_serving(
    hap: HAProxyDataPlane, apps: Apps
) -> None:
    a = apps.start("ka", version="1")
    port = free_port()
    hap.apply(table(vroute(port, [a])))
    pid = hap.worker_pid()
    # Valid for Python's re, refused by PCRE2 (no \U escape): only haproxy -c sees it.
    bad = (VersionRule("1", header="X-V", regex="\\U00000062"),)
    with pytest.raises(HAProxyConfigInvalid, match="haproxy refused"):
        hap.apply(table(vroute(port, [a], rules=bad)))
    assert get(port)[0] == 200 and hap.worker_pid() == pid
    # A port clash: another process holds the port of a second route.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        other = Route("other", taken, "http", (a.backend,))
        with pytest.raises(ListenError, match=str(taken)):
            hap.apply(table(vroute(port, [a]), other))
    assert get(port)[0] == 200 and hap.worker_pid() == pid
    # After refusals the plane still applies good tables.
    b = apps.start("ka", version="1")
    hap.apply(table(vroute(port, [a, b])))
    assert {get(port)[1].decode().split()[0] for _ in range(4)} == {f"id={a.id}", f"id={b.id}"}


def test_zero_failed_requests_replacing_every_backend(hap: HAProxyDataPlane, apps: Apps) -> None:
    old = [apps.start("ka", version="1") for _ in range(3)]
    port = free_port()
    hap.apply(table(vroute(port, old)))
    reloads = hap.reloads
    with Load(port, threads=4, keep_alive=True) as load:
        wait_until(lambda: load.count() > 50, what="traffic before the rollout")
        fresh = roll(hap, apps, "ka", "http", port, old, load)  # type: ignore[arg-type]
        wait_until(lambda: load.count() > 50, what="traffic after")
    assert load.failures() == [], load.failures()[:5]
    assert hap.reloads == reloads  # the new version went to the spare group
    assert {get(port)[1].decode().split()[0] for _ in range(6)} == {f"id={a.id}" for a in fresh}


def test_tcp_weights_per_connection(hap: HAProxyDataPlane, apps: Apps) -> None:
    old, new = apps.start("tcp_echo", version="old"), apps.start("tcp_echo", version="new")
    port = free_port()
    hap.apply(table(vroute(port, [old, new], {"old": 75, "new": 25}, protocol="tcp")))
    seen: Counter[str] = Counter()
    for _ in range(40):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ping")
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        seen[answer.decode().split(":")[0]] += 1
    assert abs(seen[new.id] - 10) <= 2, seen


def test_reload_under_keep_alive_load_fails_no_request(hap: HAProxyDataPlane, apps: Apps) -> None:
    backends = [apps.start("ka", version="1") for _ in range(2)]
    port = free_port()
    hap.apply(table(vroute(port, backends)))
    pid = hap.worker_pid()
    with Load(port, threads=4, keep_alive=True) as load:
        wait_until(lambda: load.count() > 50, what="traffic before the reload")
        for n in range(3):  # each new rule is structure: three reloads
            rules = tuple(VersionRule("1", header=f"X-R{i}", exact="1") for i in range(n + 1))
            hap.apply(table(vroute(port, backends, rules=rules)))
            seen = load.count()
            wait_until(lambda seen=seen: load.count() > seen + 50, what="traffic after a reload")
    assert hap.worker_pid() != pid
    assert load.failures() == [], load.failures()[:5]


def test_a_kept_haproxy_is_adopted_with_its_figures_by_the_next_plane(
    tmp_path: Path, apps: Apps
) -> None:
    """The daemon's setting (keep_running): close() leaves HAProxy serving; a new plane
    on the same directory adopts the master, its layout and its counters: the next
    change goes through the runtime API (no reload) and the totals go on growing."""
    workdir = tmp_path / "haproxy"
    one, two = apps.start("ka", version="1"), apps.start("ka", version="1")
    port = free_port()
    first = HAProxyDataPlane(workdir, slots_per_version=4, keep_running=True)
    try:
        first.apply(table(vroute(port, [one])))
        for _ in range(30):
            assert get(port)[0] == 200
        wait_until(lambda: first.version_figures("svc")["1"].requests == 30)
        worker = first.worker_pid()
        first.close()
        assert get(port)[0] == 200  # nobody drives it: it serves on
        second = HAProxyDataPlane(workdir, slots_per_version=4, keep_running=False)
        try:
            assert second.adopted and second.worker_pid() == worker
            assert second.version_figures("svc")["1"].requests == 31
            second.apply(table(vroute(port, [one, two])))  # a backend more: runtime API
            assert second.reloads == 0 and second.worker_pid() == worker
            for _ in range(20):
                assert get(port)[0] == 200
            figures = {f.backend_id: f.requests for f in second.figures("svc")}
            assert figures[one.id] > 31 and figures[two.id] > 0
            # The request log goes on to the same reader address: percentiles go on.
            # (the request sent while no reader was bound is the one line lost)
            wait_until(lambda: sum(second.version_figures("svc")["1"].latency) >= 50)
        finally:
            second.close()  # it adopted HAProxy, it did not start it: it leaves it serving
        assert get(port)[0] == 200
    finally:
        first.stop()  # the explicit stop (gitorch proxy stop)
    with pytest.raises(ConnectionRefusedError):
        get(port)
