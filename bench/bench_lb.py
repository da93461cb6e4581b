"""Load balancers: direct vs ``gitorch proxy`` vs HAProxy, with wrk (not a test).

Backends: 3 replicas that answer ``200 ok`` from a separate haproxy process
(``http-request return``), so the backend is never the bottleneck and every data path
hits the same replicas. Measured, in interleaved rounds (median of the rounds):

* max rate: ``wrk -t1 -c16 --latency`` against one replica directly; the separated
  proxy (``gitorch proxy run``, a process of its own driven over its control socket, as
  the daemon runs it) with one worker process on the standard asyncio loop, with one
  worker on uvloop, and with ``--workers`` workers; and :class:`HAProxyDataPlane` as
  gitorch runs it (with its request log, for latency percentiles) and without the log:
  requests/s, p99, and ratios against the faster HAProxy; HAProxy once more with one
  thread (no log; by default it runs a thread per core), the like-for-like peer of one
  proxy worker (one process, one core); and the CPU time (user +
  system) each proxy's processes spent per request answered, a figure that other work
  on a shared machine disturbs far less than requests/s;
* p99 at a fixed rate of 50% of each proxy variant's max (direct and HAProxy at the
  same rate): wrk has no ``-R`` (that is wrk2, not in Debian), so each wrk connection
  waits ``1000 * connections / rate`` ms after each answer (a Lua ``delay()``). That is a
  closed loop with think time: close to the target rate when answers are fast, and (like
  wrk) blind to coordinated omission; the rate achieved is printed next to the target;
* idle memory: the resident set of each proxy (its coordinator and workers) and of
  HAProxy (master and worker), serving one route, before any load.

Goal (issues 6 and 13): one proxy process >= 50% of HAProxy's throughput, < 2 ms added at
p99 at 50% load. Two readings are printed: one worker against HAProxy on one thread (a
process on a core each), and the proxy as it runs by default (a worker per core) against
HAProxy as it runs by default (a thread per core).

Run: ``python3 bench/bench_lb.py [--seconds 5] [--rounds 3] [--workers 2]``; with
``--against REV``, only one uvloop worker of this checkout against one of commit REV and
HAProxy on one thread (an A/B of a change to the request path, at the same moment).
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

from verdicts import emit  # noqa: E402

from gitorch.traffic.haproxy import HAProxyDataPlane  # noqa: E402
from gitorch.traffic.proxy.client import ProxyDataPlane  # noqa: E402
from gitorch.traffic.proxy.control import ProxyPaths, call  # noqa: E402
from gitorch.traffic.table import Backend, Route, RoutingTable  # noqa: E402

CONNECTIONS = 16

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


def start_proxy(
    workdir: Path,
    name: str,
    workers: int,
    event_loop: str,
    table: RoutingTable,
    tree: Path = REPO,
) -> subprocess.Popen[bytes]:
    """``gitorch proxy run`` (foreground) on a state dir of its own, serving ``table``,
    with the code of ``tree`` (this checkout, or another commit's: ``--against``)."""
    state = workdir / name.replace(" ", "-")
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gitorch.traffic.proxy", "run", "--state", str(state),
         "--workers", str(workers), "--event-loop", event_loop, "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,  # ``-m`` puts the working directory first on the path
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ProxyPaths.of(state).socket.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"{name}: gitorch proxy did not start")
        time.sleep(0.05)
    ProxyDataPlane(state, start=False).apply(table)
    return proc


def stop_proxy(workdir: Path, name: str, proc: subprocess.Popen[bytes]) -> None:
    socket_path = ProxyPaths.of(workdir / name.replace(" ", "-")).socket
    try:
        call(socket_path, {"op": "stop"}, 5.0)
        proc.wait(30)
    except Exception:
        proc.kill()
        proc.wait()


def one_thread_haproxy(workdir: Path) -> str:
    """An ``haproxy`` that reads one more configuration file, ``nbthread 1`` (HAProxy merges
    the global sections of every ``-f``): gitorch's configuration leaves the thread count
    to HAProxy, which starts one per core."""
    extra = workdir / "one-thread.cfg"
    extra.write_text("global\n    nbthread 1\n")
    wrapper = workdir / "haproxy-one-thread"
    haproxy = shutil.which("haproxy")
    wrapper.write_text(f'#!/bin/sh\nexec {haproxy} "$@" -f {extra}\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the proxy's keeper, its coordinator, the workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    pids = [pid]
    for each in pids:  # grows while it is walked: breadth first
        pids.extend(child for child, parent in parents.items() if parent == each)
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by ``pids`` (threads included)."""
    return sum(cpu_split(pids))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU time used so far by ``pids`` (threads included)."""
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def resident_mb(pid: int) -> float:
    """Resident set of ``pid`` and its children (MiB)."""
    total_kb = 0
    for each in process_tree(pid):
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        total_kb += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers", type=int, default=2, help="processes of the multi-worker proxy (default 2)"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="only compare one uvloop worker of this checkout with one of commit REV "
        "(and HAProxy on one thread), CPU per request first: an A/B at the same moment",
    )
    args = parser.parse_args()
    for tool in ("wrk", "haproxy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y {tool})")
    if args.against:
        against(args.against, args.seconds, args.rounds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        replica_ports = [free_port() for _ in range(3)]
        replicas = start_replicas(workdir, replica_ports)
        addresses = [f"127.0.0.1:{p}" for p in replica_ports]
        backends = tuple(Backend(f"r{i}", a, version="1") for i, a in enumerate(addresses))

        def table_on(port: int) -> RoutingTable:
            return RoutingTable(MappingProxyType({"bench": Route("bench", port, "http", backends)}))

        targets = {"direct": replica_ports[0]}
        proxies: dict[str, subprocess.Popen[bytes]] = {}
        planes = {
            "haproxy": HAProxyDataPlane(workdir / "haproxy"),
            "haproxy-nolog": HAProxyDataPlane(workdir / "haproxy-nolog", request_log=False),
            "haproxy-1thread": HAProxyDataPlane(
                workdir / "haproxy-1thread", haproxy=one_thread_haproxy(workdir), request_log=False
            ),
        }
        variants = (
            ("proxy x1", 1, "asyncio"),
            ("proxy x1 uvloop", 1, "uvloop"),
            (f"proxy x{args.workers}", args.workers, "asyncio"),
            (f"proxy x{args.workers} uvloop", args.workers, "uvloop"),
        )
        try:
            for name, workers, loop in variants:
                port = targets[name] = free_port()
                proxies[name] = start_proxy(workdir, name, workers, loop, table_on(port))
            for name, plane in planes.items():
                port = targets[name] = free_port()
                plane.apply(table_on(port))
            for port in targets.values():
                wait_port(port)
            time.sleep(1)
            print("idle memory (resident, MiB):")
            for name, proc in proxies.items():
                print(f"  {name:>16}: {resident_mb(proc.pid):6.1f} (coordinator + workers)")
            for name, plane in planes.items():
                assert plane.master.pid is not None
                print(f"  {name:>16}: {resident_mb(plane.master.pid):6.1f} (master + worker)")
            trees = {name: process_tree(proc.pid) for name, proc in proxies.items()}
            for name, plane in planes.items():
                assert plane.master.pid is not None
                trees[name] = process_tree(plane.master.pid)
            run(targets, args.seconds, args.rounds, trees)
        finally:
            for plane in planes.values():
                plane.close()
            for name, proc in proxies.items():
                stop_proxy(workdir, name, proc)
            replicas.kill()
            replicas.wait()


def against(rev: str, seconds: float, rounds: int) -> None:
    """One uvloop worker of this checkout against one of ``rev`` (its tree from ``git
    archive``) and HAProxy on one thread, in interleaved rounds: CPU per request (the
    figure a shared machine disturbs least) and requests/s, medians of the rounds."""
    commit = subprocess.run(  # noqa: S603
        ["git", "-C", str(REPO), "rev-parse", "--short", rev],  # noqa: S607
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        old_tree = workdir / f"tree-{commit}"
        old_tree.mkdir()
        archive = subprocess.run(  # noqa: S603
            ["git", "-C", str(REPO), "archive", commit],  # noqa: S607
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)  # noqa: S603,S607
        replica_ports = [free_port() for _ in range(3)]
        replicas = start_replicas(workdir, replica_ports)
        backends = tuple(
            Backend(f"r{i}", f"127.0.0.1:{p}", version="1") for i, p in enumerate(replica_ports)
        )

        def table_on(port: int) -> RoutingTable:
            return RoutingTable(MappingProxyType({"bench": Route("bench", port, "http", backends)}))

        names = {"this checkout": REPO, f"at {commit}": old_tree}
        proxies: dict[str, subprocess.Popen[bytes]] = {}
        targets: dict[str, int] = {}
        plane = HAProxyDataPlane(
            workdir / "haproxy-1thread", haproxy=one_thread_haproxy(workdir), request_log=False
        )
        try:
            for name, tree in names.items():
                port = targets[name] = free_port()
                proxies[name] = start_proxy(workdir, name, 1, "uvloop", table_on(port), tree)
            targets["haproxy, one thread"] = free_port()
            plane.apply(table_on(targets["haproxy, one thread"]))
            for port in targets.values():
                wait_port(port)
            time.sleep(1)
            trees = {name: process_tree(proc.pid) for name, proc in proxies.items()}
            assert plane.master.pid is not None
            trees["haproxy, one thread"] = process_tree(plane.master.pid)
            print(f"load average at start: {os.getloadavg()[0]:.1f}; one uvloop worker each")
            rates: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, list[float]] = {name: [] for name in targets}
            split: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
            for _ in range(rounds):
                for name, port in targets.items():
                    user, system = cpu_split(trees[name])
                    rps, _ = wrk(port, seconds)
                    rates[name].append(rps)
                    after = cpu_split(trees[name])
                    per = 1e6 / (rps * seconds)
                    split[name].append(((after[0] - user) * per, (after[1] - system) * per))
                    cpu[name].append(sum(split[name][-1]))
            print(f"load average at the end: {os.getloadavg()[0]:.1f}")
            for name in targets:
                user = statistics.median(u for u, _ in split[name])
                system = statistics.median(s for _, s in split[name])
                print(
                    f"  {name:>20}: cpu/req {statistics.median(cpu[name]):5.1f} us (user {user:.1f}, "
                    f"system {system:.1f}) {[round(c, 1) for c in cpu[name]]}  "
                    f"{statistics.median(rates[name]):8.0f} req/s {[round(r) for r in rates[name]]}"
                )
            new, old = (statistics.median(cpu[name]) for name in names)
            peer = statistics.median(cpu["haproxy, one thread"])
            print(f"  CPU per request, this checkout / {commit}: {new / old:.2f}")
            print(f"  CPU per request, haproxy on one thread / this checkout: {peer / new:.2f}")
            rate = statistics.median(rates["this checkout"])
            print(
                "  requests/s, this checkout / haproxy on one thread: "
                f"{rate / statistics.median(rates['haproxy, one thread']):.2f}"
            )
        finally:
            plane.close()
            for name, proc in proxies.items():
                stop_proxy(workdir, name, proc)
            replicas.kill()
            replicas.wait()


def run(targets: dict[str, int], seconds: float, rounds: int, trees: dict[str, list[int]]) -> None:
    """Max rate, CPU per request, and p99 at half load; ``trees``: each proxy's processes
    (CPU per request is their user + system time over the requests answered: a figure a
    shared machine disturbs less than requests/s, which depend on the CPU left over)."""
    load = os.getloadavg()[0]
    print(f"load average at start: {load:.1f}; {CONNECTIONS} connections, {seconds:.0f} s runs")
    top: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    cpu: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(rounds):
        for name, port in targets.items():
            before = cpu_seconds(trees[name]) if name in trees else 0.0
            rps, p99 = wrk(port, seconds)
            top[name].append((rps, p99))
            if name in trees:
                cpu[name].append((cpu_seconds(trees[name]) - before) / (rps * seconds) * 1e6)
    best = {name: statistics.median(r for r, _ in runs) for name, runs in top.items()}
    p99 = {name: statistics.median(p for _, p in runs) for name, runs in top.items()}
    print("max rate (median of rounds), CPU per request of the proxy's processes:")
    for name in targets:
        rounds_text = [round(r) for r, _ in top[name]]
        per_request = f"{statistics.median(cpu[name]):5.1f} us" if name in cpu else "       "
        print(
            f"  {name:>16}: {best[name]:8.0f} req/s  p99 {p99[name]:6.2f} ms  cpu/req "
            f"{per_request}  rounds {rounds_text}"
        )
    builtins = [name for name in targets if name.startswith("proxy")]
    # The faster HAProxy is the bar: its request log (percentiles) costs it something.
    bar = max(best["haproxy"], best["haproxy-nolog"])
    one_thread = best["haproxy-1thread"]
    peers = {name: one_thread if name.startswith("proxy x1") else bar for name in builtins}
    for name in builtins:
        print(f"  {name} / haproxy (faster of the two, a thread per core): {best[name] / bar:.2f}")
    for name in builtins:
        if name.startswith("proxy x1"):
            print(f"  {name} / haproxy on one thread: {best[name] / one_thread:.2f}")
    print(f"  haproxy with request log / without: {best['haproxy'] / best['haproxy-nolog']:.2f}")
    print(f"  haproxy on one thread / a thread per core: {one_thread / best['haproxy-nolog']:.2f}")
    for name in builtins:
        ratio = statistics.median(cpu["haproxy-nolog"]) / statistics.median(cpu[name])
        print(f"  CPU per request, haproxy (no log) / {name}: {ratio:.2f}")
    print("p99 at a fixed rate of 50% of each proxy's max (haproxy and direct at that rate):")
    verdicts = []
    for name in builtins:
        target = best[name] / 2
        delay_ms = 1000 * CONNECTIONS / target
        fixed: dict[str, list[tuple[float, float]]] = {n: [] for n in ("direct", name, "haproxy")}
        for _ in range(rounds):
            for other in fixed:
                fixed[other].append(wrk(targets[other], seconds, delay_ms))
        at = {n: statistics.median(p for _, p in runs) for n, runs in fixed.items()}
        got = {n: statistics.median(r for r, _ in runs) for n, runs in fixed.items()}
        added = at[name] - at["direct"]
        print(
            f"  ~{target:.0f} req/s: direct p99 {at['direct']:.2f} ms ({got['direct']:.0f}/s), "
            f"{name} {at[name]:.2f} ms ({got[name]:.0f}/s), haproxy {at['haproxy']:.2f} ms "
            f"({got['haproxy']:.0f}/s); added at p99: {name} {added:+.2f} ms, "
            f"haproxy {at['haproxy'] - at['direct']:+.2f} ms"
        )
        ratio_ok = best[name] / peers[name] >= 0.5
        peer = "haproxy on one thread" if peers[name] == one_thread else "haproxy"
        verdicts.append(
            f"{name}: throughput >= 50% of {peer}: {'met' if ratio_ok else 'NOT met'}; "
            f"< 2 ms added at p99 at 50% load: {'met' if added < 2 else 'NOT met'}"
        )
        emit(
            f"{name}: max rate, median of {rounds} rounds",
            f"{best[name]:,.0f} req/s",
            against=f"{peer} ({peers[name]:,.0f} req/s)",
            ratio=f"{best[name] / peers[name]:.2f}x",
            goal=">= 0.5x the peer",
            met=ratio_ok,
        )
        emit(
            f"{name}: p99 added at 50% of its max rate",
            f"{added:+.2f} ms",
            against=f"direct to the replicas (p99 {at['direct']:.2f} ms)",
            goal="< 2 ms",
            met=added < 2,
        )
    print("goal:")
    for verdict in verdicts:
        print(f"  {verdict}")


if __name__ == "__main__":
    main()
