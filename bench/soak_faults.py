"""The soak's faults: each one injected, held for its duration and undone, with the
moments the checks need (when it began, when it ended, when the part came back).

One fault at a time: they come from one thread in the order of the plan, so each
excuse window (see :mod:`soak_checks`) belongs to exactly one fault.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from replica_procs import alive, replica_processes
from soak_plan import Planned
from soak_rig import (
    Daemon,
    DataPlane,
    Foreign,
    GitRemote,
    Journal,
    World,
    signal_pid,
)

#: Longest wait for a rollout to be under way before an aligned fault goes ahead anyway.
ALIGN_WAIT = 20.0
#: Longest wait for the data plane to come back after a kill (a break beyond the bound
#: is the checks' business; this only stops waiting).
PROXY_BACK_WAIT = 120.0


@dataclass
class Injected:
    """One fault as it happened (monotonic times)."""

    kind: str
    start: float
    end: float = 0.0
    target: str = ""  # the service, replica, port... it hit
    detail: str = ""
    back: float | None = None  # proxy-kill: when a new proxy answered
    gone: float | None = None  # kills: when the killed process had ended (its sockets shut)
    skipped: str = ""  # why nothing was injected (no candidate)
    others_ready: int = -1  # replica faults: other replicas of the service answering


@dataclass
class Faults:
    """Injects the plan's faults (module docstring)."""

    world: World
    daemon: Daemon
    plane: DataPlane
    remote: GitRemote
    journal: Journal
    cluster: Callable[[], str | None]
    absent_extra: Callable[[float], tuple[str, int] | None]  # an extra not in the shop
    add_service: Callable[[str, Planned], None]  # the port-taken fault's commit
    rollout_under_way: Callable[[], bool]
    engine_restart: Callable[[float], str] | None = None  # docker: restart the engine
    etcd: Any = None  # etcd_helpers.EtcdCluster: the soak's own members (--state etcd://)
    done: list[Injected] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    foreign: list[Foreign] = field(default_factory=list)  # port holders while they hold
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    # -- the runner -------------------------------------------------------------------------

    def inject(self, planned: Planned) -> Injected:
        if planned.aligned:
            deadline = time.monotonic() + ALIGN_WAIT
            while time.monotonic() < deadline and not self.rollout_under_way():
                time.sleep(0.25)
        injector = getattr(self, "_" + planned.kind.replace("-", "_"))
        fault = Injected(planned.kind, time.monotonic())
        with self._lock:
            self.done.append(fault)
        self.journal.note("fault", f"{planned.describe()}: begins", fault=planned.kind)
        try:
            injector(planned, fault)
        finally:
            fault.end = time.monotonic()
        if fault.skipped:
            self.journal.note("fault", f"{planned.kind}: skipped ({fault.skipped})")
        else:
            self.counts[planned.kind] += 1
            self.journal.note(
                "fault",
                f"{planned.kind}: ends after {fault.end - fault.start:.1f}s"
                + (f" ({fault.detail})" if fault.detail else ""),
                target=fault.target,
            )
        return fault

    def undo_all(self) -> None:
        """Undo whatever fault is under way (an interruption or the end of the soak)."""
        while self._undo:
            step = self._undo.pop()
            with contextlib.suppress(Exception):
                step()

    def _hold(self, seconds: float, undo: Callable[[], None]) -> None:
        self._undo.append(undo)
        try:
            time.sleep(seconds)
        finally:
            if undo in self._undo:
                self._undo.remove(undo)
            undo()

    # -- the daemon -------------------------------------------------------------------------

    def _daemon_kill(self, planned: Planned, fault: Injected) -> None:
        fault.target = f"pid {self.daemon.pid}"
        self.daemon.kill()
        self._hold(planned.duration, self._daemon_restart)
        fault.detail = f"restarted after {planned.duration:.1f}s"

    def _daemon_restart(self) -> None:
        if not self.daemon.running():
            self.daemon.start()

    def _daemon_stop(self, planned: Planned, fault: Injected) -> None:
        fault.target = f"pid {self.daemon.pid}"
        self.daemon.pause()
        self._hold(planned.duration, self.daemon.resume)

    # -- the data plane ---------------------------------------------------------------------

    def _proxy_kill(self, planned: Planned, fault: Injected) -> None:
        pid = self.plane.coordinator()
        if pid is None:
            fault.skipped = "no proxy runs"
            return
        workers = self.plane.workers()
        fault.target = f"pid {pid} (+ workers {workers})"
        signal_pid(pid, signal.SIGKILL)
        # The workers end when their pipe to the coordinator closes; the keeper starts a
        # new coordinator on the same sockets.
        fault.gone = max([_gone(pid), *(_gone(w) for w in workers)])
        deadline = time.monotonic() + PROXY_BACK_WAIT
        while time.monotonic() < deadline:
            answering = self.plane.answers(1.0)
            if answering is not None and answering != pid:
                fault.back = time.monotonic()
                fault.detail = f"new proxy {answering} after {fault.back - fault.start:.1f}s"
                return
            time.sleep(0.1)
        fault.detail = f"no proxy answered within {PROXY_BACK_WAIT:.0f}s"

    def _proxy_worker_kill(self, planned: Planned, fault: Injected) -> None:
        workers = sorted(self.plane.workers())
        if not workers:
            fault.skipped = "no proxy worker runs"
            return
        pid = workers[min(len(workers) - 1, int(planned.draws[0] * len(workers)))]
        fault.target = f"worker pid {pid}"
        fault.start = time.monotonic()
        signal_pid(pid, signal.SIGKILL)
        fault.gone = _gone(pid)
        fault.detail = f"gone {fault.gone - fault.start:.2f}s after SIGKILL"

    def _proxy_stop(self, planned: Planned, fault: Injected) -> None:
        pid = self.plane.coordinator()
        if pid is None:
            fault.skipped = "no proxy runs"
            return
        pids = [pid, *self.plane.workers()]
        fault.target = f"pids {pids}"
        for p in pids:
            signal_pid(p, signal.SIGSTOP)

        def resume() -> None:
            for p in pids:
                signal_pid(p, signal.SIGCONT)

        self._hold(planned.duration, resume)

    # -- replicas ---------------------------------------------------------------------------

    def _replica(self, planned: Planned, fault: Injected) -> int | None:
        cluster = self.cluster()
        replicas = sorted(replica_processes(cluster), key=lambda r: r.name) if cluster else []
        replicas = [r for r in replicas if r.state != "T"]
        if not replicas:
            fault.skipped = "no replica runs"
            return None
        chosen = replicas[min(len(replicas) - 1, int(planned.draws[0] * len(replicas)))]
        fault.target = chosen.service
        others = [r for r in replicas if r.service == chosen.service and r.pid != chosen.pid]
        fault.others_ready = sum(1 for r in others if _ready(r.env.get("PORT")))
        fault.detail = f"{chosen.name} (pid {chosen.pid}), {fault.others_ready} other(s) ready"
        return chosen.pid

    def _replica_kill(self, planned: Planned, fault: Injected) -> None:
        pid = self._replica(planned, fault)
        if pid is not None:
            fault.start = time.monotonic()  # the kill itself, after choosing the replica
            signal_pid(pid, signal.SIGKILL)
            fault.gone = _gone(pid)
            fault.detail += f", gone {fault.gone - fault.start:.2f}s after SIGKILL"

    def _replica_stop(self, planned: Planned, fault: Injected) -> None:
        pid = self._replica(planned, fault)
        if pid is None:
            return
        signal_pid(pid, signal.SIGSTOP)
        self._hold(planned.duration, lambda: signal_pid(pid, signal.SIGCONT) and None)

    # -- the world around -------------------------------------------------------------------

    def _port_taken(self, planned: Planned, fault: Injected) -> None:
        """A foreign process takes the port of a service about to be added, then the commit
        that adds it lands; the port is released after the duration and the service must
        come up then (the others are served throughout)."""
        chosen = self.absent_extra(planned.draws[0])
        if chosen is None:
            fault.skipped = "every extra service exists"
            return
        name, port = chosen
        try:
            holder = Foreign.listener(f"port-{port}", port, self.world.logs)
        except (OSError, RuntimeError) as exc:
            fault.skipped = f"port {port} could not be taken: {exc}"
            return
        with self._lock:
            self.foreign.append(holder)
        fault.target = name
        fault.detail = f"port {port} held by pid {holder.pid}"
        self.add_service(name, planned)

        def release() -> None:
            with self._lock:
                if holder in self.foreign:
                    self.foreign.remove(holder)
            holder.end()

        self._hold(planned.duration, release)

    def _git_unreachable(self, planned: Planned, fault: Injected) -> None:
        self.remote.make_unreachable()
        fault.target = str(self.world.remote)
        self._hold(planned.duration, self.remote.make_reachable)

    def _disk_full(self, planned: Planned, fault: Injected) -> None:
        filler = self.world.state / "filler"
        written = _fill(filler)
        fault.target = str(self.world.state)
        fault.detail = f"{written >> 20} MiB written, {self.world.state_free_bytes()} bytes left"
        self._hold(planned.duration, lambda: filler.unlink(missing_ok=True))

    def _docker_restart(self, planned: Planned, fault: Injected) -> None:
        if self.engine_restart is None:
            fault.skipped = "not the docker runtime"
            return
        fault.detail = self.engine_restart(planned.draws[0])
        fault.target = "dockerd"

    def _etcd_member_kill(self, planned: Planned, fault: Injected) -> None:
        if self.etcd is None:
            fault.skipped = "not the soak's own etcd cluster"
            return
        members = self.etcd.members
        member = members[min(len(members) - 1, int(planned.draws[0] * len(members)))]
        fault.target = f"etcd member {member.name} ({member.endpoint})"
        self.etcd.kill(member)

        def restart() -> None:
            self.etcd.restart(member)
            self.etcd.wait_healthy(timeout=60)

        self._hold(planned.duration, restart)

    # -- what the checks ask ----------------------------------------------------------------

    def foreign_intact(self) -> list[str]:
        with self._lock:
            holders = list(self.foreign)
        return [what for what in (h.intact() for h in holders) if what]

    def proxy_gone_pids(self) -> list[int]:
        return [p for p in (self.plane.coordinator(),) if p is not None and not alive(p)]


#: Longest wait for a killed process to end (a break beyond it is not this module's).
GONE_WAIT = 10.0


def _gone(pid: int) -> float:
    """When ``pid`` had ended after a SIGKILL (a zombie has closed its sockets). On a
    loaded machine the kernel takes a while to tear a process down, and until then it
    still accepts connections into its listening socket's queue."""
    deadline = time.monotonic() + GONE_WAIT
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    return time.monotonic()


def _ready(port: str | None) -> bool:
    """The replica listening on ``port`` answers its health check (what readiness asks)."""
    if not port or not port.isdigit():
        return False
    for path in ("/healthz", "/cgi-bin/healthz"):  # the Python apps', the images'
        try:
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=1.0)
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            conn.close()
        except (OSError, http.client.HTTPException):
            return False
        if response.status != 404:
            return response.status == 200
    return False


def _fill(path: os.PathLike[str] | str) -> int:
    """Write ``path`` until the filesystem is full; the bytes written."""
    written = 0
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as fh:
        while True:
            try:
                written += fh.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # The last partial block: byte by byte would take long; halve until nothing fits.
        size = 1 << 19
        while size >= 512:
            try:
                written += fh.write(b"\0" * size)
            except OSError:
                size //= 2
    return written
