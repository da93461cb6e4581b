"""The built-in load balancer on several worker processes (SO_REUSEPORT), against real
backend processes: the same promises as in-process, plus worker replacement and no
worker outliving its coordinator."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from traffic_helpers import Apps, free_port, get, route, table, wait_until

from gitorch.traffic.figures import BackendFigures, by_version
from gitorch.traffic.routes import ListenError
from gitorch.traffic.workers import _FIGURES, WorkerPool, merge_figures

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    workers = WorkerPool("127.0.0.1", workers=2)
    try:
        yield workers
    finally:
        workers.close()


def fresh_connection_gets(port: int, count: int) -> list[int]:
    return [get(port)[0] for _ in range(count)]


def test_every_worker_serves_and_figures_add_up(pool: WorkerPool, apps: Apps) -> None:
    backends = [apps.start("ka").backend for _ in range(2)]
    port = free_port()
    pool.apply(table(route(port, backends)))
    assert pool.endpoints() == {"svc": port}
    assert fresh_connection_gets(port, 200) == [200] * 200
    per_worker = [sum(f.requests for f in w.ask((_FIGURES, "svc"), 5.0)) for w in pool._workers]
    assert sum(per_worker) == 200
    assert min(per_worker) > 0, per_worker  # the kernel spread the connections
    versions = by_version(pool.figures("svc"))
    assert versions["1"].requests == 200
    assert versions["1"].backends == 2
    assert sum(versions["1"].latency) == 200


def test_draining_backend_gets_nothing_once_apply_returns(pool: WorkerPool, apps: Apps) -> None:
    old, new = apps.start("ka"), apps.start("ka")
    port = free_port()
    pool.apply(table(route(port, [old.backend])))
    slow_result: list[int] = []
    slow = threading.Thread(target=lambda: slow_result.append(get(port, "/slow?ms=500")[0]))
    slow.start()
    wait_until(lambda: (s := pool.backend_stats("svc", old.id)) is not None and s.in_flight == 1)
    pool.apply(table(route(port, [replace(old.backend, draining=True), new.backend])))
    for _ in range(30):
        assert get(port)[1].decode().split()[0] == f"id={new.id}"
    slow.join(5)
    assert slow_result == [200]


def test_a_killed_worker_is_replaced_and_nothing_fails(pool: WorkerPool, apps: Apps) -> None:
    port = free_port()
    pool.apply(table(route(port, [apps.start("ka").backend])))
    victim = pool._workers[0].process
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    # The pool keeps the dead worker's socket open: connections the kernel queued on it
    # wait for the replacement (started within WATCH_EVERY, no call needed), none is reset.
    assert fresh_connection_gets(port, 50) == [200] * 50
    wait_until(lambda: pool._workers[0].process.pid != victim.pid, what="a replacement")
    assert pool.endpoints() == {"svc": port}
    assert pool._workers[0].alive()
    assert fresh_connection_gets(port, 50) == [200] * 50


def test_group_signals_leave_the_workers_to_their_coordinator(pool: WorkerPool, apps: Apps) -> None:
    """Ctrl-C, `timeout` and systemd signal the daemon's whole process group; the workers
    must not die of it: the daemon stops them once it has read their last figures."""
    port = free_port()
    pool.apply(table(route(port, [apps.start("ka").backend])))
    pids = [w.process.pid for w in pool._workers]
    for pid in pids:
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    assert all(w.alive() for w in pool._workers)
    assert [w.process.pid for w in pool._workers] == pids
    assert fresh_connection_gets(port, 20) == [200] * 20


def test_two_routes_on_one_port_and_a_busy_port_are_refused(pool: WorkerPool, apps: Apps) -> None:
    backend = apps.start("ka").backend
    port = free_port()
    with pytest.raises(ListenError, match="already uses it"):
        pool.apply(table(route(port, [backend], service="a"), route(port, [backend], service="b")))
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        taken = busy.getsockname()[1]
        other = free_port()
        with pytest.raises(ListenError, match="already in use"):
            pool.apply(
                table(route(taken, [backend], service="a"), route(other, [backend], service="b"))
            )
        assert get(other)[0] == 200  # the other route is served anyway
    finally:
        busy.close()


def test_workers_exit_when_their_coordinator_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from gitorch.traffic.workers import WorkerPool
        if __name__ == "__main__":
            pool = WorkerPool("127.0.0.1", workers=2)
            print(" ".join(str(w.process.pid) for w in pool._workers), flush=True)
            time.sleep(60)
        """
    )
    path = tmp_path / "coordinator.py"
    path.write_text(script)
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        proc.kill()
        proc.wait(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.1)
        assert not any(_running(p) for p in pids)
    finally:
        proc.kill()
        proc.wait(5)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_merge_figures_adds_up_the_same_backend() -> None:
    def fig(backend: str, requests: int, latency: tuple[int, ...]) -> BackendFigures:
        return BackendFigures(backend, "v1", 1, requests, 1, 0, latency, float(requests))

    merged = merge_figures([[fig("a", 3, (1, 2)), fig("b", 1, (1, 0))], [fig("a", 2, (0, 2))]])
    assert [(f.backend_id, f.requests, f.latency, f.in_flight) for f in merged] == [
        ("a", 5, (1, 4), 2),
        ("b", 1, (1, 0), 1),
    ]
