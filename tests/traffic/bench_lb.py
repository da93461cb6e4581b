"""Requests/s through the built-in load balancer vs straight to the backend (not a test).

One keep-alive HTTP/1.1 backend (tests/traffic/apps/ka_server.py) and the client share
core 1; the balancer runs in its own process alone on core 0 (taskset): a single http.client
keep-alive connection, and wrk (1 thread, 4 connections) when it is installed. Rounds are
interleaved so drift hits both sides alike.

Run: ``python3 tests/traffic/bench_lb.py [seconds-per-round]``
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from traffic_helpers import Apps, free_port, wait_port  # noqa: E402

LB_SCRIPT = """
import sys, time
from types import MappingProxyType
from gitorch.traffic.builtin import BuiltinLoadBalancer
from gitorch.traffic.table import Backend, Route, RoutingTable
port, backend = int(sys.argv[1]), sys.argv[2]
lb = BuiltinLoadBalancer()
lb.apply(RoutingTable(MappingProxyType({"b": Route("b", port, "http", (Backend("b1", backend),))})))
while True:
    time.sleep(3600)
"""


def client_rps(port: int, seconds: float) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    done = 0
    end = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        conn.request("GET", "/")
        conn.getresponse().read()
        done += 1
    took = time.perf_counter() - started
    conn.close()
    return done / took


def wrk_rps(port: int, seconds: float) -> float | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    out = subprocess.run(
        ["taskset", "-c", "1", wrk, "-t1", "-c4", f"-d{seconds:.0f}s", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    apps = Apps()
    lb_proc = None
    try:
        backend = apps.start("ka")
        subprocess.run(
            ["taskset", "-apc", "1", str(backend.proc.pid)], check=True, capture_output=True
        )
        lb_port = free_port()
        lb_proc = subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                sys.executable,
                "-c",
                LB_SCRIPT,
                str(lb_port),
                backend.backend.address,
            ],
            env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)},
        )
        wait_port(lb_port, lb_proc)
        os.sched_setaffinity(0, {1})
        direct_port = backend.backend.port
        rows: dict[str, list[float]] = {"direct": [], "lb": [], "wrk direct": [], "wrk lb": []}
        for _ in range(3):
            rows["direct"].append(client_rps(direct_port, seconds))
            rows["lb"].append(client_rps(lb_port, seconds))
            for name, port in (("wrk direct", direct_port), ("wrk lb", lb_port)):
                value = wrk_rps(port, seconds)
                if value is not None:
                    rows[name].append(value)
        for name, values in rows.items():
            if values:
                print(
                    f"{name:>11}: median {sorted(values)[len(values) // 2]:8.0f} req/s  rounds {[round(v) for v in values]}"
                )
    finally:
        if lb_proc is not None:
            lb_proc.kill()
            lb_proc.wait()
        apps.stop_all()


if __name__ == "__main__":
    main()
