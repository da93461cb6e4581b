"""The built-in load balancer in L4 (tcp) mode, against real backend processes."""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from dataclasses import replace

from traffic_helpers import Apps, free_port, get, route, table, wait_until

from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer
from gitorch.traffic.table import Backend


def exchange(port: int, payload: bytes) -> bytes:
    """Send ``payload``, half-close, read the answer until the peer closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_tcp_splices_both_ways_with_half_close(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    echo = apps.start("tcp_echo")
    port = free_port()
    lb.apply(table(route(port, [echo.backend], "tcp")))
    payload = bytes(i % 256 for i in range(1_000_000))
    assert exchange(port, payload) == echo.id.encode() + b":" + payload
    # The client has its bytes before the proxy's splice task has counted the close.
    wait_until(lambda: lb.backend_stats("svc", echo.id).in_flight == 0)  # type: ignore[union-attr]
    stats = lb.backend_stats("svc", echo.id)
    assert stats is not None and stats.requests == 1 and stats.in_flight == 0


def test_tcp_round_robin_per_connection(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    echoes = [apps.start("tcp_echo") for _ in range(3)]
    port = free_port()
    lb.apply(table(route(port, [e.backend for e in echoes], "tcp")))
    counts = Counter(exchange(port, b"hi").split(b":")[0].decode() for _ in range(60))
    assert counts == {e.id: 20 for e in echoes}


def test_tcp_counts_open_connections_and_honours_draining(
    lb: BuiltinLoadBalancer, apps: Apps
) -> None:
    first, second = apps.start("tcp_echo"), apps.start("tcp_echo")
    port = free_port()
    lb.apply(table(route(port, [first.backend], "tcp")))
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        wait_until(lambda: lb.backend_stats("svc", first.id).in_flight == 1)  # type: ignore[union-attr]
        lb.apply(table(route(port, [replace(first.backend, draining=True), second.backend], "tcp")))
        for _ in range(5):
            assert exchange(port, b"x").startswith(second.id.encode())
        # The connection opened before draining still works end to end.
        held.sendall(b"still here")
        held.shutdown(socket.SHUT_WR)
        assert held.recv(100) == first.id.encode() + b":still here"
    finally:
        held.close()
    wait_until(lambda: lb.backend_stats("svc", first.id).in_flight == 0)  # type: ignore[union-attr]


def test_tcp_fails_over_and_closes_when_all_backends_are_down(
    lb: BuiltinLoadBalancer, apps: Apps
) -> None:
    echo = apps.start("tcp_echo")
    dead = Backend("dead", f"127.0.0.1:{free_port()}")
    port = free_port()
    lb.apply(table(route(port, [dead, echo.backend], "tcp")))
    for _ in range(4):
        assert exchange(port, b"a").startswith(echo.id.encode())
    assert lb.backend_stats("svc", "dead").errors >= 1  # type: ignore[union-attr]
    lb.apply(table(route(port, [dead], "tcp")))
    # Accepted, then closed: no backend could be reached.
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        contextlib.suppress(ConnectionResetError),
    ):
        assert sock.recv(100) == b""


def test_tcp_carries_the_example_app(lb: BuiltinLoadBalancer, apps: Apps) -> None:
    api = apps.start("api", version="7")
    port = free_port()
    lb.apply(table(route(port, [api.backend], "tcp")))
    status, body, _ = get(port, "/items")
    assert status == 200 and b'"version": "7"' in body
