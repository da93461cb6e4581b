"""A SIGKILL of the data plane under load refuses no connection (a real detached
``gitorch proxy``, real backends, ``hey`` opening a new connection per request).

Before the socket keeper (gitorch/traffic/proxy/keeper.py), a killed coordinator took its
workers and every listening socket with it: clients were refused for the 1-5 s until the
daemon noticed and started a new proxy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_plane_helpers import stop_data_plane
from hey_report import hey_figures
from listen_ports import free_port
from traffic_helpers import Apps, get, route, table, wait_until

from gitorch.traffic.haproxy.process import process_alive
from gitorch.traffic.proxy.client import ProxyDataPlane
from gitorch.traffic.proxy.control import ProxyPaths, ProxyUnavailable, call

CONCURRENCY = 10


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ProxyDataPlane]:
    state = tmp_path / "state"
    state.mkdir()
    try:
        yield ProxyDataPlane(state, workers=2)
    finally:
        stop_data_plane(state)


def hello(state: Path) -> dict[str, object]:
    return call(ProxyPaths.of(state).socket, {"op": "hello"}, 5.0)


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def replaced(state: Path, first: int) -> bool:
    """A coordinator other than ``first`` answers."""
    try:
        return int(hello(state)["pid"]) != first  # type: ignore[arg-type]
    except ProxyUnavailable:
        return False


class Hey:
    """``hey`` for ``seconds``, a new connection per request, in the background."""

    def __init__(self, port: int, seconds: int) -> None:
        self.proc = subprocess.Popen(
            [
                "hey",
                "-z",
                f"{seconds}s",
                "-c",
                str(CONCURRENCY),
                "-disable-keepalive",
                f"http://127.0.0.1:{port}/",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def result(self) -> tuple[int, int, int, str]:
        """(answered, refused, other errors, hey's report)."""
        out, _ = self.proc.communicate(timeout=120)
        answered, refused, other, _slowest = hey_figures(out)
        return answered, refused, other, out


def serving(plane: ProxyDataPlane, apps: Apps) -> int:
    app = apps.start("ka")
    port = free_port()
    plane.apply(table(route(port, [app.backend])))
    wait_until(lambda: get(port)[0] == 200, 10, "the proxy to serve")
    return port


@pytest.mark.slow
def test_a_killed_proxy_and_a_killed_worker_refuse_no_connection(
    plane: ProxyDataPlane, apps: Apps
) -> None:
    port = serving(plane, apps)
    state = plane.state_dir
    first = int(hello(state)["pid"])  # type: ignore[arg-type]
    load = Hey(port, 8)
    time.sleep(2)
    os.kill(first, signal.SIGKILL)  # the coordinator; its workers exit with it
    wait_until(lambda: not process_alive(first), 10, "the coordinator to die")

    def restarted() -> bool:
        plane.health()  # what the daemon does every 2 s: starts a proxy if none answers
        return replaced(state, first)

    wait_until(restarted, 15, "a new coordinator")
    time.sleep(1)
    second = int(hello(state)["pid"])  # type: ignore[arg-type]
    workers = children(second)
    assert workers, "the new coordinator has no worker"
    os.kill(workers[0], signal.SIGKILL)
    ok, refused, other, report = load.result()
    assert refused == 0, report
    # Requests in flight on the killed processes' connections die with them: at most one
    # per client for each of the two kills.
    assert other <= 2 * CONCURRENCY, report
    assert ok > 100, report
    assert get(port)[0] == 200


@pytest.mark.slow
def test_a_stopped_proxy_stops_for_good(plane: ProxyDataPlane, apps: Apps) -> None:
    """The keeper restarts a coordinator that died, never one that was told to stop."""
    port = serving(plane, apps)
    state = plane.state_dir
    about = hello(state)
    keeper = int(about["keeper"])  # type: ignore[arg-type]
    plane.stop()
    wait_until(lambda: not process_alive(keeper), 20, "the keeper to exit")
    assert not process_alive(int(about["pid"]))  # type: ignore[arg-type]
    with pytest.raises(OSError):
        get(port)


@pytest.mark.slow
def test_a_port_the_table_drops_closes_though_the_keeper_held_it(
    plane: ProxyDataPlane, apps: Apps
) -> None:
    """The keeper holds only what the coordinator listens on: a removed route's port is
    refused at once, and a coordinator killed afterwards does not bring it back."""
    kept = serving(plane, apps)
    dropped = free_port()
    backend = apps.start("ka").backend
    plane.apply(table(route(kept, [backend]), route(dropped, [backend], service="other")))
    wait_until(lambda: get(dropped)[0] == 200, 10, "the second route")
    plane.apply(table(route(kept, [backend])))
    with pytest.raises(ConnectionRefusedError):
        get(dropped)
    first = int(hello(plane.state_dir)["pid"])  # type: ignore[arg-type]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: replaced(plane.state_dir, first), 15, "a new coordinator")
    assert get(kept)[0] == 200
    with pytest.raises(ConnectionRefusedError):
        get(dropped)


@pytest.mark.slow
def test_a_killed_keeper_leaves_the_coordinator_serving(plane: ProxyDataPlane, apps: Apps) -> None:
    port = serving(plane, apps)
    about = hello(plane.state_dir)
    assert f"(socket keeper {about['keeper']})" in status(plane.state_dir)
    os.kill(int(about["keeper"]), signal.SIGKILL)  # type: ignore[arg-type]
    wait_until(lambda: not process_alive(int(about["keeper"])), 10, "the keeper to die")  # type: ignore[arg-type]
    plane.apply(table(route(port, [apps.start("ka", version="2").backend])))  # still driven
    wait_until(lambda: b"version=2" in get(port)[1], 10, "version 2")
    now = hello(plane.state_dir)
    assert now["pid"] == about["pid"] and now["keeper"] is None, now
    assert "(no socket keeper)" in status(plane.state_dir)


def status(state: Path) -> str:
    """``gitorch proxy status`` as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "gitorch", "proxy", "status", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_a_table_that_cannot_be_kept_is_served_all_the_same(
    plane: ProxyDataPlane, apps: Apps
) -> None:
    """Found by the chaos soak (disk-full with etcd state, seed 9): the proxy closed the
    daemon's ``apply`` when it could not write table.json, so the daemon took it for dead
    and, during a full disk, changed nothing (replicas it meant to drain kept traffic)."""
    port = serving(plane, apps)
    tmp = ProxyPaths.of(plane.state_dir).root / ".table.json.tmp"
    tmp.mkdir()  # writing the table fails as on a full disk (an OSError)
    plane.apply(table(route(port, [apps.start("ka", version="2").backend])))
    assert b"version=2" in get(port)[1]


@pytest.mark.slow
def test_a_proxy_taking_over_on_a_full_disk_serves(plane: ProxyDataPlane, apps: Apps) -> None:
    """Found by the CI soak (seed 60, a proxy kill then a full disk): the proxy the daemon
    started took the sockets over, released its predecessor, then died writing its pid
    file, and no one served (refused connections)."""
    port = serving(plane, apps)
    first = int(hello(plane.state_dir)["pid"])  # type: ignore[arg-type]
    (ProxyPaths.of(plane.state_dir).root / ".proxy.pid.tmp").mkdir()  # writes fail
    done = subprocess.run(
        [sys.executable, "-m", "gitorch", "proxy", "restart", "--state", str(plane.state_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    wait_until(lambda: replaced(plane.state_dir, first), 15, "the successor")
    assert get(port)[0] == 200
