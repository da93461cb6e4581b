"""``gitorch proxy`` as a user runs it: replaced under load, started alone on the last
table, started again by the daemon after a crash, stopped explicitly (real daemon, real
proxy processes, process-driver replicas)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_plane_helpers import kill_proxy_tree
from outlive_helpers import Traffic, World, converged_daemon
from reconciler_helpers import get_version, gitorch, wait_for

from gitorch.traffic.haproxy.process import process_alive
from gitorch.traffic.proxy.control import ProxyPaths, ProxyUnavailable, call

TIMEOUT = 45.0


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World.make(tmp_path, "process")
    try:
        yield made
    finally:
        made.teardown()


def hello(world: World) -> dict[str, object]:
    return call(ProxyPaths.of(world.state.resolve()).socket, {"op": "hello"}, 5.0)


def proxy(world: World, *args: str) -> str:
    done = gitorch("proxy", *args, "--state", str(world.state), cwd=world.root)
    assert done.code == 0, f"gitorch proxy {' '.join(args)}: {done.code}\n{done.stderr}"
    return done.stdout


def requests_counted(world: World) -> int:
    """Requests the proxy counted for ``api``, every version."""
    socket_path = ProxyPaths.of(world.state.resolve()).socket
    answer = call(socket_path, {"op": "versions", "service": "api"}, 5.0)
    return sum(int(v["requests"]) for v in answer["versions"].values())


@pytest.mark.slow
def test_replacing_the_proxy_under_load_drops_no_request(world: World) -> None:
    sha = world.commit("1")
    daemon = converged_daemon(world, "builtin", sha, TIMEOUT)
    old = hello(world)
    with Traffic(world.port) as traffic:
        traffic.wait_answers(100, 20)
        before = requests_counted(world)
        out = proxy(world, "restart")
        new = hello(world)
        assert new["pid"] != old["pid"], (old, new)
        assert f"took over from proxy {old['pid']}" in out
        wait_for("the old proxy to exit", lambda: not process_alive(int(old["pid"])), 40)
        traffic.wait_answers(100, 20)
        # The per-version totals were handed over: the new proxy counts on from them.
        assert requests_counted(world) >= before + 200
        # The daemon drives the new proxy: a rollout through it loses nothing either.
        v2 = world.commit("2")
        wait_for(
            "version 2 converged",
            lambda: (
                (svc := daemon.service("api")) is not None
                and svc["revision"] == v2
                and svc["rollout"]["phase"] == "Healthy"
            ),
            TIMEOUT,
            describe=daemon.log_tail,
        )
        traffic.wait_answers(50, 20)
    traffic.assert_no_failure()
    assert traffic.versions["2"] > 0


@pytest.mark.slow
def test_a_proxy_started_alone_serves_the_last_table(world: World) -> None:
    sha = world.commit("1")
    daemon = converged_daemon(world, "builtin", sha, TIMEOUT)
    daemon.stop()  # SIGTERM: the daemon goes, the proxy stays
    assert get_version(world.port) == "1"
    assert "built-in proxy" in proxy(world, "stop")
    assert get_version(world.port) is None  # stopping is explicit, and it stops
    assert "built-in proxy: not running" in proxy(world, "status")
    proxy(world, "run", "--detach")  # no daemon: the last applied table is served
    wait_for("the proxy alone", lambda: get_version(world.port) == "1", 10)
    status = proxy(world, "status")
    assert "built-in proxy: pid" in status and "1 routes" in status and "serving" in status


@pytest.mark.slow
def test_the_daemon_starts_a_killed_proxy_again_but_never_a_stopped_one(world: World) -> None:
    sha = world.commit("1")
    daemon = converged_daemon(world, "builtin", sha, TIMEOUT)
    first = kill_proxy_tree(world.state)  # a crash of the whole proxy (keeper too)
    wait_for("the proxy to die", lambda: not process_alive(first), 10)

    def restarted() -> bool:
        try:
            return int(hello(world)["pid"]) != first and get_version(world.port) == "1"
        except ProxyUnavailable:
            return False

    wait_for("the daemon to start a proxy again", restarted, 20, describe=daemon.log_tail)
    proxy(world, "stop")
    time.sleep(5)  # the daemon reads figures every 2 s: it would have started one by now
    assert get_version(world.port) is None
    code, health = daemon.request("GET", "/healthz")
    assert code == 503 and "gitorch proxy stop" in health["reason"], health
    proxy(world, "run", "--detach")
    wait_for("the proxy back", lambda: get_version(world.port) == "1", 10)
    wait_for("the daemon healthy", lambda: daemon.request("GET", "/healthz")[0] == 200, 10)


@pytest.mark.slow
def test_stopping_haproxy_is_explicit_and_holds_while_the_daemon_runs(world: World) -> None:
    sha = world.commit("1")
    daemon = converged_daemon(world, "haproxy", sha, TIMEOUT)
    daemon.stop()
    assert get_version(world.port) == "1"  # HAProxy outlives the daemon
    daemon = converged_daemon(world, "haproxy", sha, TIMEOUT)  # and is adopted
    assert "haproxy" in proxy(world, "stop", "--data-plane", "haproxy")
    assert get_version(world.port) is None
    world.commit("2")  # a change the daemon must apply: it does not start HAProxy again
    time.sleep(4)
    assert get_version(world.port) is None
    assert daemon.request("GET", "/healthz")[0] == 503
    daemon.stop()
    converged_daemon(world, "haproxy", world.commit("3"), TIMEOUT)  # a new daemon: back
    assert get_version(world.port) == "3"
