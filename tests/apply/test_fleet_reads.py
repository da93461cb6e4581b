"""FleetDataPlane's reads over the hosts' ingresses: the hosts are read in parallel (one
that stopped answering costs one call's timeout, not one per host), and a host whose
read failed is left out of reads (forgotten by the fleet) while the others are summed.

The ingresses here are stand-ins with the two methods a read uses (the real ones, over
engines' exec sessions, are in tests/multihost/test_ingress.py and test_partition.py)."""

from __future__ import annotations

import time
from typing import Any, cast

from gitorch.apply.ingress import FleetDataPlane, IngressFleet
from gitorch.errors import GitorchError
from gitorch.traffic.table import BackendStats, DataPlane

SILENCE = 0.5  # seconds a silent host takes to fail a read (the channel's timeout)


class Ingress:
    def __init__(self, node: str, in_flight: int, *, silent: bool = False) -> None:
        self.node = node
        self.in_flight = in_flight
        self.silent = silent

    def backend_stats(self, service: str, backend_id: str) -> BackendStats:
        if self.silent:
            time.sleep(SILENCE)
            raise GitorchError(f"node {self.node}: the ingress did not answer: timed out")
        return BackendStats(in_flight=self.in_flight)


class Fleet:
    """The two methods of IngressFleet a read uses."""

    def __init__(self, *ingresses: Ingress) -> None:
        self.ingresses = {i.node: i for i in ingresses}
        self.forgotten: list[str] = []

    def serving(self) -> list[tuple[str, Ingress]]:
        return [(n, i) for n, i in sorted(self.ingresses.items()) if n not in self.forgotten]

    def forget(self, nodes: Any) -> None:
        self.forgotten.extend(nodes)

    def close(self) -> None:
        pass


class Local:
    def backend_stats(self, service: str, backend_id: str) -> BackendStats:
        return BackendStats(in_flight=1)

    def close(self) -> None:
        pass


def _plane(fleet: Fleet) -> FleetDataPlane:
    return FleetDataPlane(cast(DataPlane, Local()), cast(IngressFleet, fleet))


def test_silent_hosts_cost_one_timeout_together_and_are_left_out() -> None:
    fleet = Fleet(
        Ingress("h1", 2),
        Ingress("h2", 50, silent=True),
        Ingress("h3", 3),
        Ingress("h4", 70, silent=True),
    )
    plane = _plane(fleet)
    try:
        started = time.monotonic()
        stats = plane.backend_stats("shop", "b1")
        took = time.monotonic() - started
        assert stats == BackendStats(in_flight=1 + 2 + 3), stats
        assert took < SILENCE * 1.8, f"two silent hosts read one after the other ({took:.2f} s)"
        assert sorted(fleet.forgotten) == ["h2", "h4"]

        # Left out of the next reads: no wait at all.
        started = time.monotonic()
        assert plane.backend_stats("shop", "b1") == BackendStats(in_flight=6)
        assert time.monotonic() - started < SILENCE / 2
    finally:
        plane.close()
