"""HAProxy: switching traffic between versions never leaves a route without a server.

Roundrobin answers "503 No server is available" at once when no server of a backend is
ready and weighted, and nothing retries that answer. So each runtime API command the data
plane sends must keep at least one such server in the route's main backend. Two checks
on a real haproxy:

* replayed: the servers' state is read from HAProxy (``show servers state``), then every
  command the plane sent for a switch is replayed on that model one by one; after each
  one the main backend must still have a server in rotation (deterministic: no timing
  luck involved), and the model must end where HAProxy really is;
* under load: keep-alive clients while the switch goes back and forth, 0 failed requests.

The switches are the ones progressive delivery makes, blue-green abort first (the new
colour leaves the table while the old one gets the whole weight, in one table).
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import pytest
from traffic_helpers import App, Apps, Load, free_port, table, wait_until

from gitorch.traffic.haproxy import HAProxyDataPlane
from gitorch.traffic.table import Backend, Route, RoutingTable

#: Admin state bits of ``show servers state`` (HAProxy's SRV_ADMF_MAINT and _DRAIN
#: masks; 0x04, "disabled in the configuration", stays set after ``state ready``).
MAINT_BITS = 0x01 | 0x02 | 0x20
DRAIN_BITS = 0x08 | 0x10


@pytest.fixture
def hap(tmp_path: Path) -> Iterator[HAProxyDataPlane]:
    assert shutil.which("haproxy"), "haproxy is not installed (apt-get install -y haproxy)"
    plane = HAProxyDataPlane(tmp_path / "haproxy", slots_per_version=4)
    try:
        yield plane
    finally:
        plane.close()


@dataclass
class Slot:
    """One HAProxy server as the model sees it."""

    weight: int
    state: str  # ready | drain | maint

    @property
    def in_rotation(self) -> bool:
        return self.state == "ready" and self.weight > 0


def admin(hap: HAProxyDataPlane, command: str) -> str:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(hap.admin_sock))
        sock.sendall(command.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks).decode()


def servers_state(hap: HAProxyDataPlane, backend: str) -> dict[str, Slot]:
    """HAProxy's own view of ``backend``'s servers."""
    slots: dict[str, Slot] = {}
    for line in admin(hap, f"show servers state {backend}").splitlines():
        fields = line.split()
        if len(fields) < 8 or not fields[0].isdigit():
            continue
        name, bits, weight = fields[3], int(fields[6]), int(fields[7])
        state = "maint" if bits & MAINT_BITS else "drain" if bits & DRAIN_BITS else "ready"
        slots[f"{backend}/{name}"] = Slot(weight, state)
    return slots


def replay(start: dict[str, Slot], commands: list[str], backend: str) -> list[int]:
    """Apply ``set server`` commands to ``start`` (in place); servers of ``backend`` in
    rotation after each command."""
    counts: list[int] = []
    for command in commands:
        words = command.split()
        if words[:2] == ["set", "server"] and words[2] in start:
            slot = start[words[2]]
            if words[3] == "weight":
                slot.weight = int(words[4])
            elif words[3] == "state":
                slot.state = words[4]
        counts.append(
            sum(s.in_rotation for name, s in start.items() if name.startswith(f"{backend}/"))
        )
    return counts


def vtable(
    port: int, apps: list[App], weights: dict[str, int], drain: frozenset[str] = frozenset()
) -> RoutingTable:
    backends = tuple(
        Backend(a.id, a.backend.address, a.backend.version, draining=a.id in drain) for a in apps
    )
    return table(Route("svc", port, "http", backends, weights=MappingProxyType(weights)))


def checked_apply(hap: HAProxyDataPlane, new: RoutingTable) -> list[str]:
    """Apply ``new`` at runtime (no reload allowed) and check every step of it."""
    before = servers_state(hap, "be_svc")
    mark, reloads = len(hap.changes), hap.reloads
    hap.apply(new)
    assert hap.reloads == reloads, "a runtime switch must not reload"
    commands = [what for _, what in list(hap.changes)[mark:]]
    counts = replay(before, commands, "be_svc")
    assert all(counts), f"no server in rotation after a step of: {commands}"
    assert before == servers_state(hap, "be_svc"), "the model ended elsewhere than HAProxy"
    return commands


def test_every_step_of_a_bluegreen_switch_and_abort_keeps_a_server(
    hap: HAProxyDataPlane, apps: Apps
) -> None:
    blue = [apps.start("ka", version="1") for _ in range(2)]
    green = [apps.start("ka", version="2") for _ in range(2)]
    port = free_port()
    hap.apply(vtable(port, blue, {"1": 100}))
    checked_apply(hap, vtable(port, blue + green, {"1": 100, "2": 0}))  # green comes up
    checked_apply(hap, vtable(port, blue + green, {"1": 0, "2": 100}))  # the switch
    # Abort in the scale-down delay: green leaves the table, blue takes all the weight.
    commands = checked_apply(hap, vtable(port, blue, {"1": 100, "2": 0}))
    assert any("state maint" in c for c in commands), commands  # green really left
    # Again with the next colour, now in another group, and a drain instead of removal.
    again = [apps.start("ka", version="3") for _ in range(2)]
    checked_apply(hap, vtable(port, blue + again, {"1": 100, "3": 0}))
    checked_apply(hap, vtable(port, blue + again, {"1": 0, "3": 100}))
    drain = frozenset(a.id for a in again)
    checked_apply(hap, vtable(port, blue + again, {"1": 100, "3": 0}, drain))
    checked_apply(hap, vtable(port, blue, {"1": 100}))


def test_canary_steps_and_rollback_keep_a_server(hap: HAProxyDataPlane, apps: Apps) -> None:
    stable = [apps.start("ka", version="1") for _ in range(2)]
    canary = [apps.start("ka", version="2")]
    port = free_port()
    hap.apply(vtable(port, stable, {"1": 100}))
    for weight in (0, 10, 50, 100):
        checked_apply(hap, vtable(port, stable + canary, {"1": 100 - weight, "2": weight}))
    checked_apply(hap, vtable(port, stable, {"1": 100, "2": 0}))  # rolled back


def test_a_replaced_replica_takes_a_free_slot_not_the_one_just_left(
    hap: HAProxyDataPlane, apps: Apps
) -> None:
    # The only replica replaced by another in one table: re-pointing its slot would leave
    # nothing in rotation while the slot changes address.
    first, second = apps.start("ka", version="1"), apps.start("ka", version="1")
    port = free_port()
    hap.apply(vtable(port, [first], {}))
    commands = checked_apply(hap, vtable(port, [second], {}))
    assert f"set server be_svc/g0s1 addr 127.0.0.1 port {second.backend.port}" in commands


def test_bluegreen_abort_back_and_forth_under_load_fails_no_request(
    hap: HAProxyDataPlane, apps: Apps
) -> None:
    blue = [apps.start("ka", version="1") for _ in range(2)]
    green = [apps.start("ka", version="2") for _ in range(2)]
    port = free_port()
    hap.apply(vtable(port, blue, {"1": 100}))
    switched = vtable(port, blue + green, {"1": 0, "2": 100})
    aborted = vtable(port, blue, {"1": 100, "2": 0})
    reloads = hap.reloads
    with Load(port, threads=4, keep_alive=True) as load:
        wait_until(lambda: load.count() > 50, what="traffic before the switches")
        for _ in range(25):
            for new in (switched, aborted):
                hap.apply(new)
                seen = load.count()
                wait_until(lambda seen=seen: load.count() > seen + 8, what="traffic after")
    assert hap.reloads == reloads
    failures = load.failures()
    assert failures == [], f"{len(failures)} failed of {load.count()}: {failures[:3]}"
