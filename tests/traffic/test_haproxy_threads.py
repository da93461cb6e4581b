"""HAProxyDataPlane used from two threads, as the daemon does (the reconcile loop applies
tables, API threads read figures): a read never lands inside a reload, where a worker's
counts would be both banked and still live, so totals never exceed what was sent."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from types import MappingProxyType

from traffic_helpers import Apps, free_port, get, table

from gitorch.traffic.haproxy import HAProxyDataPlane
from gitorch.traffic.table import Route, VersionRule

SENT = 40
RELOADS = 12


def test_figures_read_during_reloads_never_count_twice(tmp_path: Path, apps: Apps) -> None:
    assert shutil.which("haproxy"), "haproxy is not installed (apt-get install -y haproxy)"
    plane = HAProxyDataPlane(tmp_path / "haproxy", slots_per_version=2)
    try:
        backends = tuple(apps.start("ka", version=v).backend for v in ("1", "2"))
        port = free_port()

        def route(rules: int) -> Route:
            # Each different rule set is a different structure: a reload, not a runtime change.
            return Route(
                "svc",
                port,
                "http",
                backends,
                weights=MappingProxyType({"1": 50, "2": 50}),
                rules=tuple(VersionRule("2", header=f"X-R{i}", exact="1") for i in range(rules)),
            )

        plane.apply(table(route(0)))
        assert [get(port)[0] for _ in range(SENT)] == [200] * SENT
        seen: list[int] = []
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                seen.append(sum(f.requests for f in plane.figures("svc")))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for n in range(RELOADS):
                plane.apply(table(route(1 + n % 2)))
        finally:
            done.set()
            reader.join(10)
        assert seen, "the reader never read"
        assert max(seen) <= SENT, f"counted up to {max(seen)} of {SENT} requests"
        assert sum(f.requests for f in plane.figures("svc")) == SENT
    finally:
        plane.close()
