"""The Docker engine's CPU time, the processes it forks included (``bench_rollout.py
--engine-cpu``): how much engine work a rolling update costs against its floor.

``dockerd`` and ``containerd`` are moved into a cgroup of their own for the run and moved
back after; the shims, ``runc`` and ``docker-proxy`` processes they fork start in it too,
so their CPU counts even once they have exited. The containers' own processes live in
the cgroups the engine makes for them and do not count. Accounting only: on cgroup v1 the
group is made in the ``cpuacct`` hierarchy alone (scheduling, the ``cpu`` controller, is
not touched); on cgroup v2 every group has ``cpu.stat`` and no controller is enabled.
Needs root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

V1_CPUACCT = Path("/sys/fs/cgroup/cpuacct")
V2_ROOT = Path("/sys/fs/cgroup")
GROUP = "gitorch-bench-engine"
#: The engine at /var/run/docker.sock: its dockerd, and the containerd it runs as its child
#: (other engines on the host, such as the tests' private ones, are left alone).
PID_FILE = Path("/var/run/docker.pid")


def engine_pids(pid_file: Path = PID_FILE) -> list[int]:
    """The dockerd that wrote ``pid_file`` and its containerd (its child, or the host's
    own containerd when the engine uses one it did not start)."""
    try:
        dockerd = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"bench: --engine-cpu cannot read dockerd's pid from {pid_file}") from exc

    def pgrep(*args: str) -> list[int]:
        found = subprocess.run(["pgrep", *args], capture_output=True, text=True, check=False)
        return [int(pid) for pid in found.stdout.split()]

    containerd = pgrep("-P", str(dockerd), "-x", "containerd") or pgrep("-x", "containerd")
    return [dockerd, *containerd]


class EngineCpu:
    """CPU seconds used by the engine's processes since :meth:`__enter__`."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("bench: --engine-cpu needs root (it moves the engine's cgroup)")
        if (V1_CPUACCT / "cpuacct.usage").is_file():
            self.mount, self.v1 = V1_CPUACCT, True
        elif (V2_ROOT / "cgroup.controllers").is_file():
            self.mount, self.v1 = V2_ROOT, False
        else:
            raise SystemExit("bench: --engine-cpu needs cgroup v1's cpuacct or cgroup v2")
        self.group = self.mount / GROUP
        self.origin: dict[int, Path] = {}

    def __enter__(self) -> EngineCpu:
        self.group.mkdir(exist_ok=True)
        for pid in engine_pids():
            self.origin[pid] = self._group_of(pid)
            (self.group / "cgroup.procs").write_text(str(pid))
        return self

    def __exit__(self, *exc: object) -> None:
        home = next(iter(self.origin.values()))
        for pid in self._members():
            with contextlib.suppress(OSError):  # exited meanwhile
                (self.origin.get(pid, home) / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):  # one forked while moving back: the next mkdir
            self.group.rmdir()

    def seconds(self) -> float:
        """The group's CPU time so far (user and system), in seconds."""
        if self.v1:
            return int((self.group / "cpuacct.usage").read_text()) / 1e9
        for line in (self.group / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise SystemExit("bench: cpu.stat has no usage_usec")

    def _members(self) -> list[int]:
        text = (self.group / "cgroup.procs").read_text()
        return [int(pid) for pid in text.split()]

    def _group_of(self, pid: int) -> Path:
        """The process's group in this hierarchy, as a folder under the mount."""
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            mine = "cpuacct" in controllers.split(",") if self.v1 else controllers == ""
            if mine:
                return self.mount / path.lstrip("/")
        raise SystemExit(f"bench: cannot tell the cgroup of pid {pid}")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in fields[:8]]
    hertz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / hertz, sum(ticks) / hertz
