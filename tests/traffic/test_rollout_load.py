"""Zero failed requests while backends are replaced, killed or slow, under continuous load.

The replacement follows what the reconciler does for each old replica: start the new one
and add it, mark the old one draining, wait until nothing is in flight on it, SIGTERM it,
then drop it from the table.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import replace

import pytest
from traffic_helpers import App, Apps, Load, free_port, get, route, table, wait_until

from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer
from gitorch.traffic.table import Backend


def roll(
    lb: BuiltinLoadBalancer,
    apps: Apps,
    kind: str,
    protocol: str,
    port: int,
    old: list[App],
    load: Load,
) -> list[App]:
    """Replace every backend in ``old`` by a version-2 one, one at a time."""
    current: dict[str, Backend] = {a.id: a.backend for a in old}
    fresh: list[App] = []

    def push() -> None:
        lb.apply(table(route(port, current.values(), protocol)))

    for app in old:
        new = apps.start(kind, version="2")
        fresh.append(new)
        current[new.id] = new.backend
        push()
        current[app.id] = replace(app.backend, draining=True)
        push()
        wait_until(
            lambda app=app: lb.backend_stats("svc", app.id).in_flight == 0,  # type: ignore[union-attr]
            timeout=5,
            what=f"{app.id} drained",
        )
        assert app.terminate(timeout=5) == 0
        del current[app.id]
        push()
        seen = load.count()
        wait_until(lambda seen=seen: load.count() > seen + 20, what="traffic after a step")
    return fresh


@pytest.mark.parametrize(
    ("kind", "protocol", "keep_alive"),
    [
        ("api", "http", True),  # the example app: HTTP/1.0, a backend connection per request
        ("ka", "http", True),  # keep-alive backend: pooled connections must be let go
        ("api", "tcp", False),  # L4 with short client connections
    ],
)
def test_zero_failed_requests_while_replacing_every_backend(
    lb: BuiltinLoadBalancer, apps: Apps, kind: str, protocol: str, keep_alive: bool
) -> None:
    old = [apps.start(kind, version="1") for _ in range(3)]
    port = free_port()
    lb.apply(table(route(port, [a.backend for a in old], protocol)))
    with Load(port, threads=4, keep_alive=keep_alive) as load:
        wait_until(lambda: load.count() > 50, what="initial traffic")
        fresh = roll(lb, apps, kind, protocol, port, old, load)
        done_at = time.monotonic()
        wait_until(lambda: load.count() > 0 and _after(load, done_at) >= 40, what="final traffic")
    failures = load.failures()
    assert failures == [], failures[:5]
    assert load.count() > 300
    final = [o.detail for o in load.outcomes if o.started > done_at]
    assert final and all("version=2" in body for body in final)
    for app in old:
        assert app.proc.returncode == 0  # each old backend exited cleanly after draining
    served = {a.id: lb.backend_stats("svc", a.id) for a in fresh}
    assert all(s is not None and s.requests > 0 and s.errors == 0 for s in served.values())


def _after(load: Load, when: float) -> int:
    return sum(1 for o in list(load.outcomes) if o.started > when)


def test_sigkilled_backend_gets_are_retried_elsewhere(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    backends = [apps.start("ka") for _ in range(3)]
    port = free_port()
    lb.apply(table(route(port, [a.backend for a in backends])))
    victim = backends[0]
    with Load(port, threads=4, keep_alive=True, post_every=5) as load:
        wait_until(lambda: load.count() > 100, what="initial traffic")
        victim.kill()
        seen = load.count()
        wait_until(lambda: load.count() > seen + 300, what="traffic after the kill")
        # Past the cooldown the dead backend is tried again (and fails over again).
        time.sleep(2.2)
        seen = load.count()
        wait_until(lambda: load.count() > seen + 50, what="traffic after the cooldown")
    assert load.failures("GET") == [], load.failures("GET")[:5]
    assert len(load.failures("POST")) <= 4  # at most the ones in flight on the victim
    stats = lb.backend_stats("svc", victim.id)
    assert stats is not None and stats.errors >= 2 and stats.in_flight == 0
    figures = {f.backend_id: f for f in lb.figures("svc")}
    assert figures[victim.id].connect_errors >= 2


def test_slow_backend_does_not_block_the_others(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    slow = apps.start("api", version="slow", SLOW_MS="1000")
    fast = apps.start("api", version="fast")
    port = free_port()
    lb.apply(table(route(port, [slow.backend, fast.backend])))

    def timed() -> tuple[float, bytes]:
        started = time.monotonic()
        status, body, _ = get(port, "/")
        assert status == 200
        return time.monotonic() - started, body

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: timed(), range(8)))
    fast_times = [t for t, body in results if b"version=fast" in body]
    slow_times = [t for t, body in results if b"version=slow" in body]
    assert len(fast_times) == len(slow_times) == 4
    # Had a fast request waited behind a slow one it would have taken 1 s or more.
    assert max(fast_times) < 0.9, fast_times
    assert min(slow_times) >= 1.0
    assert max(slow_times) < 1.9  # the slow ones ran side by side too (4 in a row: 4 s)
