"""Load balancers: direct vs the built-in LB vs HAProxy, with wrk (not a test).

Backends: 3 replicas that answer ``200 ok`` from a separate haproxy process
(``http-request return``), so the backend is never the bottleneck and all three data
paths hit the same replicas. Measured, in interleaved rounds (median of the rounds):

* max rate: ``wrk -t1 -c16 --latency`` against one replica directly, the built-in LB
  (its own process, as the daemon runs it) and :class:`HAProxyDataPlane`: requests/s and
  p99, and ratios;
* p99 at a fixed rate of 50% of the built-in LB's max: wrk has no ``-R`` (that is wrk2,
  not in Debian), so each wrk connection waits ``1000 * connections / rate`` ms after each
  answer (a Lua ``delay()``). That is a closed loop with think time: close to the target
  rate when answers are fast, and (like wrk) blind to coordinated omission; the rate
  achieved is printed next to the target.

Goal (issue 6): the built-in LB keeps >= 50% of HAProxy's throughput and adds < 2 ms at
p99 at 50% load.

Run: ``python3 bench/bench_lb.py [--seconds 5] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import MappingProxyType

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gitorch.traffic.haproxy import HAProxyDataPlane  # noqa: E402
from gitorch.traffic.table import Backend, Route, RoutingTable  # noqa: E402

CONNECTIONS = 16

LB_SCRIPT = """
import sys, time
from types import MappingProxyType
from gitorch.traffic.builtin import BuiltinLoadBalancer
from gitorch.traffic.table import Backend, Route, RoutingTable
port, addresses = int(sys.argv[1]), sys.argv[2:]
backends = tuple(Backend(f"r{i}", a, version="1") for i, a in enumerate(addresses))
lb = BuiltinLoadBalancer()
lb.apply(RoutingTable(MappingProxyType({"b": Route("b", port, "http", backends)})))
while True:
    time.sleep(3600)
"""

DELAY_LUA = """
local wait = tonumber(os.getenv("WRK_DELAY_MS"))
function delay()
  return wait
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port}")


def start_replicas(workdir: Path, ports: list[int]) -> subprocess.Popen[bytes]:
    lines = ["global", "    nbthread 1", "defaults", "    mode http", "    timeout client 30s"]
    for i, port in enumerate(ports):
        lines += [
            f"frontend replica{i}",
            f"    bind 127.0.0.1:{port}",
            f'    http-request return status 200 content-type text/plain string "ok {i}\\n"',
        ]
    config = workdir / "replicas.cfg"
    config.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["haproxy", "-f", str(config)], stdout=subprocess.DEVNULL)  # noqa: S603
    for port in ports:
        wait_port(port)
    return proc


def wrk(port: int, seconds: float, delay_ms: float | None = None) -> tuple[float, float]:
    """(requests/s, p99 ms) of one wrk run."""
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:.0f}s", "--latency"]
    env = dict(os.environ)
    script = None
    if delay_ms is not None:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)  # noqa: SIM115
        script.write(DELAY_LUA)
        script.close()
        argv += ["-s", script.name]
        env["WRK_DELAY_MS"] = f"{delay_ms:.3f}"
    argv.append(f"http://127.0.0.1:{port}/")
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout  # noqa: S603
    finally:
        if script is not None:
            os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99 = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"    (port {port}: {errors.group(0)})")
    return rps, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y {tool})")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        replica_ports = [free_port() for _ in range(3)]
        replicas = start_replicas(workdir, replica_ports)
        addresses = [f"127.0.0.1:{p}" for p in replica_ports]
        lb_port, hap_port = free_port(), free_port()
        builtin = subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", LB_SCRIPT, str(lb_port), *addresses],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        plane = HAProxyDataPlane(workdir / "haproxy")
        try:
            backends = tuple(Backend(f"r{i}", a, version="1") for i, a in enumerate(addresses))
            route = Route("bench", hap_port, "http", backends)
            plane.apply(RoutingTable(MappingProxyType({"bench": route})))
            wait_port(lb_port)
            targets = {"direct": replica_ports[0], "built-in": lb_port, "haproxy": hap_port}
            run(targets, args.seconds, args.rounds)
        finally:
            plane.close()
            builtin.kill()
            builtin.wait()
            replicas.kill()
            replicas.wait()


def run(targets: dict[str, int], seconds: float, rounds: int) -> None:
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.1f}; {CONNECTIONS} connections, {seconds:.0f} s runs")
    top: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, port in targets.items():
            top[name].append(wrk(port, seconds))
    best = {name: statistics.median(r for r, _ in runs) for name, runs in top.items()}
    p99 = {name: statistics.median(p for _, p in runs) for name, runs in top.items()}
    print("max rate (median of rounds):")
    for name in targets:
        rounds_text = [round(r) for r, _ in top[name]]
        print(
            f"  {name:>9}: {best[name]:8.0f} req/s  p99 {p99[name]:6.2f} ms  rounds {rounds_text}"
        )
    print(f"  built-in / haproxy throughput: {best['built-in'] / best['haproxy']:.2f}")
    print(f"  built-in / direct: {best['built-in'] / best['direct']:.2f}")
    print(f"  haproxy / direct: {best['haproxy'] / best['direct']:.2f}")
    target = best["built-in"] / 2
    delay_ms = 1000 * CONNECTIONS / target
    fixed: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, port in targets.items():
            fixed[name].append(wrk(port, seconds, delay_ms))
    print(f"fixed rate ~{target:.0f} req/s (50% of the built-in max):")
    at = {name: statistics.median(p for _, p in runs) for name, runs in fixed.items()}
    for name in targets:
        achieved = statistics.median(r for r, _ in fixed[name])
        print(f"  {name:>9}: p99 {at[name]:6.2f} ms  achieved {achieved:8.0f} req/s")
    added_builtin = at["built-in"] - at["direct"]
    added_haproxy = at["haproxy"] - at["direct"]
    print(f"  added at p99: built-in {added_builtin:+.2f} ms, haproxy {added_haproxy:+.2f} ms")
    ratio_ok = best["built-in"] / best["haproxy"] >= 0.5
    print(
        f"goal: throughput >= 50% of haproxy: {'met' if ratio_ok else 'NOT met'}; "
        f"< 2 ms added at p99 at 50% load: {'met' if added_builtin < 2 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
