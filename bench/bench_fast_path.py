"""The Python work of one request on the built-in balancer's fast path (not a test).

A :class:`FastClient` and pooled :class:`Upstream` connections on fake transports (no
sockets, no event loop turn): wrk's request goes in, the replica's answer comes back,
and the CPU time (``time.process_time``) per request is what the proxy's own Python
costs, apart from the kernel and the event loop: a real worker adds its four socket
calls (~10-13 us of system time per request, measured under load) and uvloop's own
work (~2.5 us); ``bench_lb.py`` measures the whole.

``--against REV`` runs the same measure on commit REV's tree (``git archive``) in turns
with this checkout's, and prints the ratio: an A/B of a change to the request path
that other work on the machine disturbs little (best of the rounds).

``--instructions`` counts instead the machine instructions one request executes
(valgrind's cachegrind: two runs of different lengths, the difference over the extra
requests): the same on a loaded machine as on an idle one, to a fraction of a percent,
so a change of 1% shows (timings under load move by 10%). Slow (about a minute a tree).

Run: ``python3 bench/bench_fast_path.py [--requests 20000] [--rounds 5] [--against REV]
[--instructions]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from verdicts import emit

REPO = Path(__file__).resolve().parent.parent

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"  # what wrk sends
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nok 0\n"


class FakeTransport:
    """Takes writes and says it is open; what a protocol asks of a socket transport."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def close(self) -> None:
        pass


def measure(requests: int, timed: bool = True) -> float:
    """Microseconds of CPU per request, with the code on ``sys.path`` (best of 3); with
    ``timed`` False, only serve ``requests`` requests (under valgrind: :func:`instructions`)."""
    from gitorch.traffic.builtin.backends import ServiceState, Upstream
    from gitorch.traffic.builtin.balancer import BuiltinLoadBalancer
    from gitorch.traffic.builtin.fast import FastClient
    from gitorch.traffic.table import Backend, Route

    backends = tuple(Backend(f"r{i}", f"127.0.0.1:{9000 + i}", version="1") for i in range(3))
    route = Route("bench", 8080, "http", backends)
    with BuiltinLoadBalancer() as lb:
        svc = ServiceState(route)
        svc.set_route(route)
        for state in svc.backends.values():
            for _ in range(2):
                upstream = Upstream()
                upstream.connection_made(FakeTransport())  # type: ignore[arg-type]
                state.fast_idle.append(upstream)
        client = FastClient(lb, svc)
        svc.connections += 1
        client.connection_made(FakeTransport())  # type: ignore[arg-type]

        def serve(count: int) -> None:
            for _ in range(count):
                client.data_received(REQUEST)
                client.upstream.data_received(ANSWER)  # type: ignore[union-attr]

        serve(2000)  # warm up (and check that the answers go through)
        assert client.transport.written == 2000 * len(ANSWER), "answers did not go through"  # type: ignore[attr-defined]
        if not timed:
            serve(requests)
            return 0.0
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            serve(requests)
            best = min(best, (time.process_time() - started) / requests * 1e6)
        return best


def run_in(tree: Path, requests: int) -> float:
    """:func:`measure` in a fresh interpreter on ``tree``'s code."""
    out = subprocess.run(  # noqa: S603
        [sys.executable, __file__, "--measure", str(requests)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(tree)},
    ).stdout  # fmt: skip
    return float(out.split()[-1])


def instructions(tree: Path, requests: int) -> float:
    """Machine instructions per request on ``tree``'s code (valgrind, see the docstring)."""
    counts = []
    for count in (1000, 1000 + requests):
        out = subprocess.run(  # noqa: S603
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",  # noqa: S607
             sys.executable, __file__, "--serve", str(count)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"},
        ).stderr  # fmt: skip
        counts.append(int(re.search(r"I\s+refs:\s+([\d,]+)", out).group(1).replace(",", "")))  # type: ignore[union-attr]
    return (counts[1] - counts[0]) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", metavar="REV", help="compare with commit REV's tree")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count machine instructions per request with valgrind (load-proof, slow)",
    )
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(f"{measure(args.measure):.3f}")
        return
    if args.serve:
        measure(args.serve, timed=False)
        return
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this checkout": REPO}
        if args.against:
            commit = subprocess.run(  # noqa: S603
                ["git", "-C", str(REPO), "rev-parse", "--short", args.against],  # noqa: S607
                capture_output=True, text=True, check=True,
            ).stdout.strip()  # fmt: skip
            archive = subprocess.run(  # noqa: S603
                ["git", "-C", str(REPO), "archive", commit],  # noqa: S607
                capture_output=True, check=True,
            ).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)  # noqa: S603,S607
            trees[f"at {commit}"] = Path(tmp)
        if args.instructions:
            counted = {name: instructions(tree, 5000) for name, tree in trees.items()}
            for name, count in counted.items():
                print(f"  {name:>16}: {count:9.0f} instructions per request")
                emit(f"fast path, {name}: instructions per request", f"{count:,.0f}")
            if args.against:
                new, old = counted.values()
                print(f"  this checkout / {list(trees)[1].removeprefix('at ')}: {new / old:.3f}")
            return
        runs: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                runs[name].append(run_in(tree, args.requests))
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    for name, values in runs.items():
        print(f"  {name:>16}: {min(values):6.2f} us per request (rounds {values})")
        emit(f"fast path, {name}: Python CPU per request, best round", f"{min(values):.2f} us")
    if args.against:
        new, old = (min(values) for values in runs.values())
        print(f"  this checkout / {list(trees)[1].removeprefix('at ')}: {new / old:.2f}")


if __name__ == "__main__":
    main()
