"""What a SIGKILL of the data plane costs clients: refused connections and the pause.

    python3 bench/bench_proxy_kill.py [--rounds 3] [--workers 2] [--concurrency 10]

A real ``gitorch proxy`` (detached, as the daemon starts it) in front of two example api
backends, under ``hey`` opening a new connection per request (``-disable-keepalive``,
``--concurrency`` clients), and a probe of our own that opens one connection every 5 ms
and notes when each was refused. Each round SIGKILLs, 2 s into a 7 s load:

* ``coordinator``: the proxy's coordinator (its workers end with it; its socket keeper
  forks a new one on the held sockets);
* ``worker``: one of its workers (the coordinator replaces it);
* ``whole``: the keeper, then the coordinator: the whole proxy, as a crash of its unit
  would. Nothing holds the sockets then: clients are refused until something starts a
  proxy again, here what the daemon does (a health request every 2 s starts one when none
  answers).

Prints per round: hey's answered and refused requests and other errors, the slowest
request (the pause clients saw), and the probe's refused window (first to last refused
connection); the ratio to compare is refused / answered.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for folder in (REPO / "rigs", REPO / "tests" / "shared", REPO / "tests" / "traffic"):
    sys.path.insert(0, str(folder))

from data_plane_helpers import kill_proxy_tree, stop_data_plane  # noqa: E402
from hey_report import hey_figures  # noqa: E402
from listen_ports import free_port  # noqa: E402
from traffic_helpers import Apps, get, route, table, wait_until  # noqa: E402
from verdicts import emit  # noqa: E402

from gitorch.traffic.proxy.client import ProxyDataPlane  # noqa: E402
from gitorch.traffic.proxy.control import ProxyPaths, ProxyUnavailable, call  # noqa: E402

LOAD_SECONDS = 7
KILL_AT = 2.0


class Probe:
    """One new connection every 5 ms; when each refused one was."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.refused: list[float] = []
        self.tries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.tries += 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5):
                    pass
            except ConnectionRefusedError:
                self.refused.append(time.monotonic())
            except OSError:
                pass

    def stop(self) -> float:
        """The refused window in seconds (0 when nothing was refused)."""
        self._stop.set()
        self._thread.join(10)
        return self.refused[-1] - self.refused[0] if self.refused else 0.0


def hey(port: int, concurrency: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["hey", "-z", f"{LOAD_SECONDS}s", "-c", str(concurrency), "-disable-keepalive",
         f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def one_round(
    plane: ProxyDataPlane, port: int, kind: str, concurrency: int
) -> tuple[str, int, int, int]:
    """The round's line, and hey's answered, refused and otherwise failed requests."""
    socket_path = ProxyPaths.of(plane.state_dir).socket
    load = hey(port, concurrency)
    probe = Probe(port)
    time.sleep(KILL_AT)
    coordinator = int(call(socket_path, {"op": "hello"}, 5.0)["pid"])
    killed = time.monotonic()
    if kind == "coordinator":
        subprocess.run(["kill", "-9", str(coordinator)], check=True)
    elif kind == "worker":
        subprocess.run(["kill", "-9", str(children(coordinator)[0])], check=True)
    else:
        kill_proxy_tree(plane.state_dir)
    back = None
    while back is None and time.monotonic() < killed + 30:
        if kind == "whole":
            time.sleep(2.0)  # the daemon's figures read: starts a proxy when none answers
            plane.health()
        try:
            pid = int(call(socket_path, {"op": "hello"}, 5.0)["pid"])
        except ProxyUnavailable:
            time.sleep(0.01)
            continue
        if kind == "worker" or pid != coordinator:
            back = time.monotonic() - killed
    out, _ = load.communicate(timeout=60)
    window = probe.stop()
    answered, refused, other, slowest = hey_figures(out)
    line = (
        f"{kind:12s} answered {answered:6d}  refused {refused:5d}  other errors {other:3d}  "
        f"slowest {slowest:5.2f} s  probe: {len(probe.refused):4d}/{probe.tries:4d} refused "
        f"over {window:4.2f} s  new coordinator answering after "
        + (f"{back:4.2f} s" if back is not None else "-")
    )
    return line, answered, refused, other


def report(kind: str, rounds: int, answered: int, refused: int, other: int) -> None:
    """A kill of the coordinator or of a worker refuses no connection (the keeper holds
    the sockets; requests in flight on the killed processes end with an EOF, as with any
    process killed mid-request); a kill of the whole proxy is refused until a new one
    starts."""
    total = answered + refused + other
    value = f"{refused:,} refused of {total:,} ({other:,} in flight lost)"
    if kind == "whole":
        emit(
            f"SIGKILL of the whole proxy, {rounds} rounds: connections refused",
            value,
            against="until the daemon's next call starts a proxy (every 2 s)",
        )
        return
    emit(
        f"SIGKILL of the proxy's {kind}, {rounds} rounds: connections refused",
        value,
        goal="0 refused",
        met=refused == 0,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    apps = Apps()
    with tempfile.TemporaryDirectory(prefix="proxy-kill-") as tmp:
        state = Path(tmp) / "state"
        state.mkdir()
        try:
            plane = ProxyDataPlane(state, workers=args.workers)
            port = free_port()
            backends = [apps.start("api").backend for _ in range(2)]
            plane.apply(table(route(port, backends)))
            wait_until(lambda: get(port)[0] == 200, 10, "the proxy to serve")
            print(
                f"proxy with {args.workers} workers, 2 api backends, hey -c "
                f"{args.concurrency} -disable-keepalive, {LOAD_SECONDS} s a round, "
                f"SIGKILL at {KILL_AT:.0f} s"
            )
            for kind in ("coordinator", "worker", "whole"):
                totals = [0, 0, 0]  # answered, refused, other errors
                for _ in range(args.rounds):
                    line, *counts = one_round(plane, port, kind, args.concurrency)
                    print(line, flush=True)
                    totals = [t + c for t, c in zip(totals, counts, strict=True)]
                    time.sleep(1.0)
                report(kind, args.rounds, *totals)
        finally:
            stop_data_plane(state)
            apps.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
