"""A remote host's ingress, measured on the rig of hosts (not a test).

The rig (``tests/shared/hosts_helpers.py``): three network namespaces with a Docker engine
each, over TLS (h1, h2) and ssh (h3). Backends: a haproxy answering ``200 ok`` itself
(``http-request return``) on h2 and on h3, so the backend is never the bottleneck. The
ingress is what gitorch runs: ``gitorch proxy`` in a host-networked container on h1 (and on
h3 for the ssh figures), started through the Docker driver and driven through the relay
over the engine's exec API (``IngressFleet``). Measured, in interleaved rounds (median):

* max rate, ``wrk -t1 -c16 --latency`` from outside (the root namespace): straight to h2's
  backend (the floor); through h1's ingress (two backends, on h2 and h3); through a
  ``gitorch proxy`` in the root namespace with the same table (the daemon's own data
  plane, the peer); through the same process run on h1 without a container (what the
  container costs, apart from the extra hops to h1): requests/s, p99, and ratios;
* the control channel: one ``health`` request to the ingress through the relay, over TLS
  (h1) and over ssh (h3), against the same request to the local proxy's unix socket;
* the ingress image: building its root filesystem (cold), loading it into an engine that
  lacks it (``docker import`` over TLS), and starting an ingress when the image is there.

Run (root; the rig needs iproute2, openssl, openssh-server, the Docker engine):
``python3 bench/bench_multihost.py [--seconds 5] [--rounds 3] [--calls 200]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [
    str(REPO),
    str(REPO / "tests" / "shared"),
    str(REPO / "tests" / "runtime"),
    str(REPO / "rigs"),  # private_dockerd, which the rig of hosts boots
]

from data_plane_helpers import stop_data_plane  # noqa: E402
from verdicts import emit  # noqa: E402

from gitorch.apply.ingress import IngressFleet  # noqa: E402
from gitorch.decide.actions import StartIngress  # noqa: E402
from gitorch.decide.ingress import HostTable  # noqa: E402
from gitorch.runtime import open_runtime  # noqa: E402
from gitorch.runtime.base import EngineAccess, Runtime  # noqa: E402
from gitorch.traffic.proxy.client import ProxyDataPlane  # noqa: E402
from gitorch.traffic.proxy.control import ProxyPaths, call  # noqa: E402
from gitorch.traffic.table import Backend, Route, RoutingTable  # noqa: E402

CONNECTIONS = 16
BACKEND_PORT = 18700
ROUTE_PORT = 18800
CLUSTER = "bench-multihost"


def wrk(address: str, port: int, seconds: float) -> tuple[float, float]:
    """(requests/s, p99 ms) of one wrk run from the root namespace."""
    out = subprocess.run(  # noqa: S603
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:.0f}s", "--latency",
         f"http://{address}:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    if errors:
        print(f"    ({address}:{port}: {errors.group(0)})")
    return rps, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def start_backend(host: object, workdir: Path) -> subprocess.Popen[bytes]:
    """haproxy answering ``200 ok`` on the host's address (in its namespace)."""
    name = host.name  # type: ignore[attr-defined]
    config = workdir / f"backend-{name}.cfg"
    config.write_text(
        "global\n    nbthread 1\ndefaults\n    mode http\n    timeout client 30s\n"
        f"frontend ok\n    bind {host.address}:{BACKEND_PORT}\n"  # type: ignore[attr-defined]
        f'    http-request return status 200 content-type text/plain string "ok {name}\\n"\n'
    )
    return subprocess.Popen(  # noqa: S603
        host.nsenter("haproxy", "-f", str(config)),  # type: ignore[attr-defined]
        stdout=subprocess.DEVNULL,
    )


def wait_answer(address: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(  # noqa: S603
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2",
             f"http://{address}:{port}/"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.stdout == "200":
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing answers at {address}:{port}")


def start_proxy(
    state: Path, prefix: list[str], host: str, port: int, table: RoutingTable
) -> subprocess.Popen[bytes]:
    """``gitorch proxy run`` with one worker on ``host`` (``prefix``: e.g. nsenter),
    serving ``table`` moved to ``port``."""
    proc = subprocess.Popen(  # noqa: S603
        [*prefix, sys.executable, "-m", "gitorch.traffic.proxy", "run", "--state", str(state),
         "--host", host, "--workers", "1", "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not ProxyPaths.of(state).socket.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"gitorch proxy on {host} did not start")
        time.sleep(0.05)
    moved = {n: replace(r, port=port) for n, r in table.routes.items()}
    ProxyDataPlane(state, start=False).apply(RoutingTable(MappingProxyType(moved)))
    wait_answer(host, port)
    return proc


def timed_calls(call_once: object, calls: int) -> tuple[float, float]:
    """(median, p95) in ms of ``calls`` calls."""
    took = []
    for _ in range(calls):
        started = time.perf_counter()
        call_once()  # type: ignore[operator]
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return statistics.median(took), took[int(len(took) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200, help="control requests per channel")
    args = parser.parse_args()
    for tool in ("wrk", "haproxy", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y {tool})")
    from hosts_helpers import boot_rig

    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rig = boot_rig()
    backends: list[subprocess.Popen[bytes]] = []
    peers: list[subprocess.Popen[bytes]] = []
    fleet: IngressFleet | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                fleet = run(rig, workdir=Path(tmp), backends=backends, peers=peers, args=args)
            finally:
                # Stopped through their control sockets while these exist: a killed
                # coordinator is forked again by its socket keeper (the proxy outlives a
                # crash), and one was left running, holding run_all's output pipe.
                for name in ("local", "on-h1"):
                    stop_data_plane(Path(tmp) / name)
    finally:
        if fleet is not None:
            fleet.close()
        for proc in (*peers, *backends):
            proc.kill()
            proc.wait()
        rig.remove_cluster(CLUSTER)
        rig.shutdown()


def run(
    rig: object,
    workdir: Path,
    backends: list[subprocess.Popen[bytes]],
    peers: list[subprocess.Popen[bytes]],
    args: argparse.Namespace,
) -> IngressFleet:
    h1, h2, h3 = rig.hosts  # type: ignore[attr-defined]
    tls, ssh = rig.tls, rig.ssh  # type: ignore[attr-defined]
    tls_access = EngineAccess(
        tls=True, ca_cert=str(tls.ca), client_cert=str(tls.cert), client_key=str(tls.key)
    )
    ssh_access = EngineAccess(
        identity_file=str(ssh.identity), known_hosts_file=str(ssh.known_hosts)
    )
    runtimes: dict[str, Runtime] = {
        "h1": open_runtime(
            "h1", "docker", endpoint=h1.tcp_endpoint, address=h1.address, access=tls_access
        ),
        "h2": open_runtime(
            "h2", "docker", endpoint=h2.tcp_endpoint, address=h2.address, access=tls_access
        ),
        "h3": open_runtime(
            "h3", "docker", endpoint=ssh.endpoint, address=h3.address, access=ssh_access
        ),
    }
    for host in (h2, h3):
        backends.append(start_backend(host, workdir))
        wait_answer(host.address, BACKEND_PORT)
    table = RoutingTable(
        MappingProxyType(
            {
                "bench": Route(
                    "bench",
                    ROUTE_PORT,
                    "http",
                    tuple(
                        Backend(f"b-{h.name}", f"{h.address}:{BACKEND_PORT}", version="1")
                        for h in (h2, h3)
                    ),
                )
            }
        )
    )

    # The image: build (cold), load into an engine that lacks it, start where it is.
    fleet = IngressFleet(CLUSTER, workdir / "ingress", workers="1")
    fleet.set_runtimes(runtimes)
    started = time.perf_counter()
    image = fleet.image()
    tar = image.build()
    build_s = time.perf_counter() - started
    size_mb = tar.stat().st_size / 2**20
    started = time.perf_counter()
    fleet.start(StartIngress("h1", h1.address, "bench"))  # loads the image, then starts
    load_and_start_s = time.perf_counter() - started
    started = time.perf_counter()
    fleet.start(StartIngress("h1", h1.address, "bench"))  # replaced: the image is there
    start_s = time.perf_counter() - started
    fleet.start(StartIngress("h3", h3.address, "bench"))  # over ssh (load and start)
    hosts = {n: HostTable(n, h.address, table) for n, h in (("h1", h1), ("h3", h3))}
    for attempt in range(3):  # as the daemon's next passes would
        failed = fleet.publish(hosts)
        if not failed:
            break
        print(f"  (attempt {attempt + 1}: {failed})")
        time.sleep(4)
    if failed:
        raise SystemExit(f"the ingresses did not take the table: {failed}")
    wait_answer(h1.address, ROUTE_PORT)

    # The peers: the daemon's own data plane (a gitorch proxy in the root namespace), and
    # the same process on h1 without a container (in its namespace, another port).
    local = start_proxy(workdir / "local", [], rig.outside_address, ROUTE_PORT, table)  # type: ignore[attr-defined]
    on_h1 = start_proxy(workdir / "on-h1", h1.nsenter(), h1.address, ROUTE_PORT + 1, table)
    peers.extend((local, on_h1))
    state = workdir / "local"

    targets = {
        "direct (h2's backend)": (h2.address, BACKEND_PORT),
        "local gitorch proxy": (rig.outside_address, ROUTE_PORT),  # type: ignore[attr-defined]
        "proxy process on h1": (h1.address, ROUTE_PORT + 1),
        "h1's ingress (TLS host)": (h1.address, ROUTE_PORT),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    for round_ in range(args.rounds):
        for name, (address, port) in targets.items():
            results[name].append(wrk(address, port, args.seconds))
        print(f"round {round_ + 1}/{args.rounds} done")
    print(f"\nmax rate, wrk -t1 -c{CONNECTIONS}, {args.seconds:g} s x {args.rounds} (median):")
    direct = statistics.median(r for r, _ in results["direct (h2's backend)"])
    peer = statistics.median(r for r, _ in results["local gitorch proxy"])
    for name, runs in results.items():
        rps = statistics.median(r for r, _ in runs)
        p99 = statistics.median(p for _, p in runs)
        print(
            f"  {name:26s} {rps:9.0f} req/s  p99 {p99:6.2f} ms  "
            f"{rps / direct:5.2f}x direct  {rps / peer:5.2f}x local proxy"
        )
        if name != "direct (h2's backend)":
            emit(
                f"{name}: max rate, wrk -t1 -c{CONNECTIONS}",
                f"{rps:,.0f} req/s (p99 {p99:.2f} ms)",
                against=f"straight to h2's backend ({direct:,.0f} req/s)",
                ratio=f"{rps / direct:.2f}x",
            )

    planes = dict(fleet.serving())
    local_socket = ProxyPaths.of(state).socket
    print(f"\ncontrol request (health), {args.calls} calls: median / p95")
    for name, once in (
        ("local proxy (unix socket)", lambda: call(local_socket, {"op": "health"}, 5.0)),
        ("h1's ingress (relay, TLS)", planes["h1"].health),
        ("h3's ingress (relay, ssh)", planes["h3"].health),
    ):
        median, p95 = timed_calls(once, args.calls)
        print(f"  {name:26s} {median:7.2f} ms / {p95:7.2f} ms")

    print("\ningress image:")
    print(f"  build (cold)            {build_s:6.1f} s  ({size_mb:.0f} MB gzipped)")
    print(f"  load + start (h1, TLS)  {load_and_start_s:6.1f} s")
    print(f"  start, image present    {start_s:6.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return fleet


if __name__ == "__main__":
    main()
