"""Replica health: startup, readiness and liveness probes run continuously.

A :class:`HealthMonitor` probes every replica the reconciler tracks, on the replica's own
node runtime (:meth:`Runtime.probe <gitorch.runtime.base.Runtime.probe>`), and keeps one
:class:`ReplicaHealth` per replica that the reconciler reads (``health()``) or waits on.

Semantics (those of Kubernetes' kubelet):

* **Startup probe first.** While a replica has a startup probe that has not passed, its
  readiness and liveness probes do not run, it is not ready and its liveness is not
  judged. One success marks it ``started``; ``failureThreshold`` failures in a row mark it
  ``needs_restart``. A replica without a startup probe is started at once.
* **Readiness.** A replica with a readiness probe starts not ready; it becomes ready after
  ``successThreshold`` consecutive successes and not ready again after
  ``failureThreshold`` consecutive failures. Without a readiness probe it is ready as soon
  as it is running and started.
* **Liveness.** ``failureThreshold`` consecutive failures (after startup) mark the replica
  ``needs_restart``; one success resets the count (``successThreshold`` is 1 for liveness
  and startup probes, as in Kubernetes).
* **Timing.** Each probe runs at its own period; its first run is ``initialDelaySeconds``
  after the replica started (``Instance.started_at``), or at once if that moment has
  passed. The next run is one period after the previous one *started*, but never while
  it is still running: one probe never runs twice at once for the same replica (a probe
  that outlasts its period delays the next one). Readiness and liveness that waited for a
  startup probe run as soon as it passes (not one period later).
* **Until first ready** a readiness probe runs every ``FIRST_READY_PERIOD`` (0.1 s) when
  its own period is longer: a new replica joins the rotation a tenth of a second after it
  answers, not up to a period later, which is most of what a rolling update waits for
  (bench/bench_rollout.py). Once ready, the probe keeps its own period. Startup and
  liveness probes always keep theirs: their failures count toward a restart, and
  ``failureThreshold x periodSeconds`` is the time a replica is given; readiness failures
  before the first success only keep a replica out of rotation that is not in it.
* **Already in rotation.** A replica the data plane serves when the monitor first sees it
  (``track(..., serving=True)``: a daemon adopting the replicas of the one before it) is
  taken as a ready one: started, ready, and out of rotation only after
  ``failureThreshold`` failed readiness probes. Kubernetes' kubelet keeps a running
  container's readiness across its own restart the same way; judging it from one first
  probe took every replica of a service out of rotation when that probe timed out on a
  busy host.
* **After needs_restart** the replica is only waiting to be replaced: it is reported not
  ready and no probe of it runs again until it is tracked anew.
* **A driver that fails** (an engine that does not answer: the runtime raises instead of
  answering ``ok=False``) is not a failing replica: nothing is counted, only
  ``last_message`` says so. Restarting every replica because dockerd hiccupped would be
  worse than waiting.

Threads: one scheduler thread holds a heap of due probes and hands them to a small pool of
workers (``workers``), so one slow probe (up to its timeout) never delays the others.
The monitor does not poll instance state: when the reconciler observes a replica anew it
calls :meth:`HealthMonitor.track` again (same instance id: counters are kept); an instance
seen not running is not ready from that moment, probe or not.

``clock`` must be unix time (it is compared with ``Instance.started_at``); the default is
:func:`time.time`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum

from gitorch.errors import GitorchError, ManifestError, RuntimeDriverError
from gitorch.manifests.model import Probe as ModelProbe
from gitorch.manifests.model import Service
from gitorch.runtime.base import Instance, InstanceState, Probe, ProbeResult, Runtime

__all__ = [
    "HealthMonitor",
    "HealthProbes",
    "ProbeKind",
    "ProbeSchedule",
    "ProbePortUnresolved",
    "ReplicaHealth",
    "UnknownNode",
]

log = logging.getLogger(__name__)

#: Longest the scheduler sleeps without looking at the clock again; only matters if the
#: clock jumps (wall time), since every change to the schedule wakes it up anyway.
_MAX_IDLE_SECONDS = 1.0
#: How long stop() waits for the scheduler thread (which never blocks on a probe).
_STOP_JOIN_SECONDS = 2.0
#: Extra time observe_now() allows a probe already in flight to finish before giving up.
_IN_FLIGHT_GRACE_SECONDS = 1.0


class UnknownNode(RuntimeDriverError):
    """A replica was tracked on a node the monitor has no runtime for."""


class ProbePortUnresolved(ManifestError):
    """A probe names a port the service does not define (validation should have caught it)."""


class ProbeKind(StrEnum):
    STARTUP = "startup"
    READINESS = "readiness"
    LIVENESS = "liveness"


@dataclass(frozen=True)
class ProbeSchedule:
    """A runtime probe with its timing and thresholds (seconds may be fractional)."""

    probe: Probe
    initial_delay_seconds: float = 0.0
    period_seconds: float = 10.0
    success_threshold: int = 1
    failure_threshold: int = 3

    def __post_init__(self) -> None:
        if self.period_seconds <= 0:
            raise ValueError(f"period_seconds must be positive, not {self.period_seconds!r}")
        if self.initial_delay_seconds < 0:
            raise ValueError("initial_delay_seconds must not be negative")
        if self.success_threshold < 1 or self.failure_threshold < 1:
            raise ValueError("success_threshold and failure_threshold must be at least 1")

    @classmethod
    def from_model(cls, probe: ModelProbe, service: Service) -> ProbeSchedule:
        """The schedule of a manifest probe, its port name resolved against ``service``."""
        port_ref = probe.http_port if probe.http_path is not None else probe.tcp_port
        port: int | None = None
        if port_ref is not None:
            port = service.port_number(port_ref)
            if port is None:
                raise ProbePortUnresolved(
                    f"service {service.name}: probe port {port_ref!r} is not in spec.ports"
                )
        runtime_probe = Probe(
            http_path=probe.http_path,
            port=port,
            tcp=probe.http_path is None and probe.tcp_port is not None,
            exec_command=probe.exec_command,
            timeout_seconds=float(probe.timeout_seconds),
        )
        return cls(
            probe=runtime_probe,
            initial_delay_seconds=float(probe.initial_delay_seconds),
            period_seconds=float(probe.period_seconds),
            success_threshold=probe.success_threshold,
            failure_threshold=probe.failure_threshold,
        )


@dataclass(frozen=True)
class HealthProbes:
    """The (up to) three probes of one replica."""

    readiness: ProbeSchedule | None = None
    liveness: ProbeSchedule | None = None
    startup: ProbeSchedule | None = None

    @classmethod
    def from_service(cls, service: Service) -> HealthProbes:
        def build(probe: ModelProbe | None) -> ProbeSchedule | None:
            return None if probe is None else ProbeSchedule.from_model(probe, service)

        return cls(
            readiness=build(service.readiness_probe),
            liveness=build(service.liveness_probe),
            startup=build(service.startup_probe),
        )

    def get(self, kind: ProbeKind) -> ProbeSchedule | None:
        if kind is ProbeKind.READINESS:
            return self.readiness
        if kind is ProbeKind.LIVENESS:
            return self.liveness
        return self.startup


@dataclass(frozen=True)
class ReplicaHealth:
    """What the probes say about one replica right now."""

    ready: bool
    ready_since: float | None  # unix time it last became ready; None when not ready
    started: bool  # startup probe passed, or there is none
    live_failures: int  # consecutive liveness failures
    needs_restart: bool  # liveness (or startup) failed failureThreshold times in a row
    last_message: str  # "<probe kind>: <message of the runtime>"
    last_probe_at: float | None  # unix time the last probe finished
    #: Unix time it first became ready since it was tracked; None until then. A rollout's
    #: batch is released as one when all its replicas have one (gitorch.decide.batch).
    first_ready_at: float | None = None


#: Readiness period of a replica that has not been ready yet (module docstring).
FIRST_READY_PERIOD = 0.1

#: Called once when a replica is tracked, then each time its ``ready``, ``started`` or
#: ``needs_restart`` changes; from a probe worker, before that probe can run again, so
#: keep it quick (wake the reconcile loop, do not reconcile in it).
HealthListener = Callable[[str, ReplicaHealth], None]


@dataclass
class _ProbeState:
    """Counters of one probe of one replica (guarded by the monitor's lock)."""

    schedule: ProbeSchedule
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    running: bool = False  # a run is in flight (scheduled or observe_now)
    done: bool = False  # never runs again (startup passed, or needs_restart)


@dataclass
class _Tracked:
    """One tracked replica (guarded by the monitor's lock). Identity is its generation."""

    replica_id: str
    runtime: Runtime
    instance: Instance
    started_at: float
    probes: dict[ProbeKind, _ProbeState]
    ready: bool = False
    ready_since: float | None = None
    started: bool = False
    live_failures: int = 0
    needs_restart: bool = False
    last_message: str = ""
    last_probe_at: float | None = None
    first_ready_at: float | None = None  # set: readiness at its own period from then on

    def snapshot(self) -> ReplicaHealth:
        return ReplicaHealth(
            ready=self.ready,
            ready_since=self.ready_since,
            started=self.started,
            live_failures=self.live_failures,
            needs_restart=self.needs_restart,
            last_message=self.last_message,
            last_probe_at=self.last_probe_at,
            first_ready_at=self.first_ready_at,
        )

    def transition_key(self) -> tuple[bool, bool, bool]:
        return (self.ready, self.started, self.needs_restart)


@dataclass(order=True)
class _Due:
    """A heap entry: run ``kind`` of ``tracked`` at ``due``."""

    due: float
    seq: int
    tracked: _Tracked = field(compare=False)
    kind: ProbeKind = field(compare=False)


class HealthMonitor:
    """Runs the probes of every tracked replica. See the module docstring."""

    def __init__(
        self,
        runtimes: Mapping[str, Runtime],
        *,
        clock: Callable[[], float] = time.time,
        workers: int = 8,
        on_change: HealthListener | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._runtimes = dict(runtimes)
        self._clock = clock
        self._workers = workers
        self._on_change = on_change
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the scheduler waits on it
        self._changed = threading.Condition(self._lock)  # wait_ready / observe_now wait on it
        self._tracked: dict[str, _Tracked] = {}
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = False

    def now(self) -> float:
        """The time on the monitor's clock (the one ``ready_since`` and
        ``first_ready_at`` are in)."""
        return self._clock()

    # -- tracking ---------------------------------------------------------------------

    def track(
        self,
        replica_id: str,
        node: str,
        instance: Instance,
        service: Service,
        *,
        serving: bool = False,
    ) -> None:
        """Probe ``instance`` of ``service`` on ``node`` from now on (see :meth:`track_probes`)."""
        self.track_probes(
            replica_id, node, instance, HealthProbes.from_service(service), serving=serving
        )

    def track_probes(
        self,
        replica_id: str,
        node: str,
        instance: Instance,
        probes: HealthProbes,
        *,
        serving: bool = False,
    ) -> None:
        """Probe ``instance`` with ``probes`` (already resolved schedules).

        Tracking the same ``replica_id`` again with the same instance id only refreshes the
        instance (its state and ports) and keeps every counter; another instance id starts
        over, as a new replica. ``serving``: the data plane serves it as this monitor first
        sees it (a daemon adopting the replicas of the one before it), so it starts as a
        ready replica does: started, ready, out of rotation only after ``failureThreshold``
        failed readiness probes, not after one probe that timed out on a busy host.
        """
        runtime = self._runtimes.get(node)
        if runtime is None:
            raise UnknownNode(f"replica {replica_id}: no runtime for node {node!r}")
        events: list[tuple[str, ReplicaHealth]] = []
        with self._lock:
            current = self._tracked.get(replica_id)
            if current is not None and current.instance.id == instance.id:
                before = current.transition_key()
                current.instance = instance
                current.runtime = runtime
                self._refresh_probeless_ready(current, self._clock())
                if current.transition_key() != before:
                    events.append((replica_id, current.snapshot()))
            else:
                now = self._clock()
                tracked = _Tracked(
                    replica_id=replica_id,
                    runtime=runtime,
                    instance=instance,
                    started_at=instance.started_at if instance.started_at is not None else now,
                    probes={
                        kind: _ProbeState(schedule)
                        for kind in ProbeKind
                        if (schedule := probes.get(kind)) is not None
                    },
                )
                self._tracked[replica_id] = tracked
                if serving and instance.state is InstanceState.RUNNING:
                    self._take_as_ready(tracked, now)
                elif ProbeKind.STARTUP in tracked.probes:
                    self._schedule_first(tracked, ProbeKind.STARTUP, now)
                else:
                    self._mark_started(tracked, now)
                events.append((replica_id, tracked.snapshot()))
            self._wake.notify()
            self._changed.notify_all()
        self._emit(events)

    def untrack(self, replica_id: str) -> None:
        """Stop probing ``replica_id``; a probe in flight finishes but its result is dropped."""
        with self._lock:
            self._tracked.pop(replica_id, None)
            self._changed.notify_all()

    def health(self, replica_id: str) -> ReplicaHealth | None:
        """The replica's current health, or ``None`` if it is not tracked."""
        with self._lock:
            tracked = self._tracked.get(replica_id)
            return None if tracked is None else tracked.snapshot()

    def tracked(self) -> list[str]:
        """Ids of every tracked replica, sorted."""
        with self._lock:
            return sorted(self._tracked)

    # -- running ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread and the worker pool (no-op if already running)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stopping = False
            self._pool = ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="gitorch-probe"
            )
            self._thread = threading.Thread(
                target=self._schedule_loop, name="gitorch-health", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop scheduling; returns without waiting for probes in flight (their results
        are still recorded when they finish). ``start()`` may be called again later."""
        with self._lock:
            thread, pool = self._thread, self._pool
            self._thread, self._pool = None, None
            self._stopping = True
            self._wake.notify_all()
        if thread is not None:
            thread.join(_STOP_JOIN_SECONDS)
        if pool is not None:
            # Queued runs return at once (they see _stopping); runs in flight end within
            # their probe timeout. Neither is waited for.
            pool.shutdown(wait=False)

    def __enter__(self) -> HealthMonitor:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- synchronous helpers ------------------------------------------------------------

    def observe_now(self, replica_id: str) -> ReplicaHealth | None:
        """Run the readiness probe once, now, in this thread; return the health after it.

        A replica whose startup probe has not passed yet gets that probe first (and the
        readiness probe only if it passed). Probes inside ``initialDelaySeconds`` are not
        run. Waits for a run of the same probe already in flight instead of overlapping it.
        """
        for kind in (ProbeKind.STARTUP, ProbeKind.READINESS):
            with self._lock:
                tracked = self._tracked.get(replica_id)
                if tracked is None:
                    return None
                state = tracked.probes.get(kind)
                if state is None or state.done or tracked.needs_restart:
                    continue
                if kind is ProbeKind.READINESS and not tracked.started:
                    break
                if self._clock() < tracked.started_at + state.schedule.initial_delay_seconds:
                    break
                limit = state.schedule.probe.timeout_seconds + _IN_FLIGHT_GRACE_SECONDS
                if not self._changed.wait_for(_idle(state), limit):
                    break  # a stuck run: report what is known rather than block the caller
                if self._tracked.get(replica_id) is not tracked or state.done:
                    continue
                state.running = True
            try:
                self._execute(tracked, kind)
            finally:
                with self._lock:
                    state.running = False
                    self._changed.notify_all()
        return self.health(replica_id)

    def wait_ready(self, replica_id: str, timeout: float) -> bool:
        """Block until the replica is ready (True) or ``timeout`` seconds passed (False)."""

        def ready() -> bool:
            tracked = self._tracked.get(replica_id)
            return tracked is not None and tracked.ready

        with self._lock:
            return self._changed.wait_for(ready, timeout)

    def wait_for(
        self, replica_id: str, predicate: Callable[[ReplicaHealth], bool], timeout: float
    ) -> ReplicaHealth | None:
        """Block until ``predicate(health)`` holds; the health then, or ``None`` on timeout."""
        result: list[ReplicaHealth] = []

        def check() -> bool:
            tracked = self._tracked.get(replica_id)
            if tracked is None:
                return False
            snapshot = tracked.snapshot()
            if predicate(snapshot):
                result.append(snapshot)
                return True
            return False

        with self._lock:
            self._changed.wait_for(check, timeout)
        return result[0] if result else None

    # -- scheduling (lock held unless said otherwise) -----------------------------------

    def _push(self, tracked: _Tracked, kind: ProbeKind, due: float) -> None:
        heapq.heappush(self._heap, _Due(due, next(self._seq), tracked, kind))
        self._wake.notify()

    def _schedule_first(self, tracked: _Tracked, kind: ProbeKind, now: float) -> None:
        delay = tracked.probes[kind].schedule.initial_delay_seconds
        self._push(tracked, kind, max(now, tracked.started_at + delay))

    def _current(self, tracked: _Tracked, kind: ProbeKind) -> bool:
        return (
            self._tracked.get(tracked.replica_id) is tracked
            and not tracked.probes[kind].done
            and not tracked.needs_restart
        )

    def _schedule_loop(self) -> None:
        """The scheduler thread: hand due probes to the pool, sleep until the next one."""
        with self._lock:
            while not self._stopping:
                now = self._clock()
                if self._heap and self._heap[0].due <= now:
                    entry = heapq.heappop(self._heap)
                    if not self._current(entry.tracked, entry.kind):
                        continue  # untracked, replaced, or finished meanwhile
                    state = entry.tracked.probes[entry.kind]
                    if state.running:  # observe_now is running it: the next one is a period on
                        self._push(entry.tracked, entry.kind, now + state.schedule.period_seconds)
                        continue
                    pool = self._pool
                    if pool is None:  # stop() is under way: keep the entry for a restart
                        heapq.heappush(self._heap, entry)
                        return
                    state.running = True
                    pool.submit(self._run_scheduled, entry.tracked, entry.kind)
                    continue
                idle = _MAX_IDLE_SECONDS
                if self._heap:
                    idle = min(max(self._heap[0].due - now, 0.0), _MAX_IDLE_SECONDS)
                self._wake.wait(idle)

    def _run_scheduled(self, tracked: _Tracked, kind: ProbeKind) -> None:
        """A worker: run one probe, then schedule the next run of it (lock not held)."""
        started = self._clock()
        with self._lock:
            if self._stopping:  # queued before stop(): run it after a restart instead
                tracked.probes[kind].running = False
                self._changed.notify_all()
                heapq.heappush(self._heap, _Due(started, next(self._seq), tracked, kind))
                return
        try:
            self._execute(tracked, kind)
        except Exception:  # a bug must not silently end this probe's schedule
            log.exception("health probe %s of %s crashed", kind, tracked.replica_id)
        finally:
            with self._lock:
                state = tracked.probes[kind]
                state.running = False
                self._changed.notify_all()
                # Pushed even while stopping: the heap keeps it for a later start().
                if self._current(tracked, kind):
                    period = state.schedule.period_seconds
                    if kind is ProbeKind.READINESS and tracked.first_ready_at is None:
                        period = min(period, FIRST_READY_PERIOD)
                    self._push(tracked, kind, max(started + period, self._clock()))

    # -- judging ------------------------------------------------------------------------

    def _execute(self, tracked: _Tracked, kind: ProbeKind) -> None:
        """Run ``kind`` against the replica (lock not held) and apply its result."""
        with self._lock:
            instance, runtime = tracked.instance, tracked.runtime
            probe = tracked.probes[kind].schedule.probe
        ok: bool | None
        try:
            result: ProbeResult = runtime.probe(instance, probe)
            ok, message = result.ok, result.message
        except GitorchError as exc:
            ok, message = None, f"probe not run: {exc.message}"
        events: list[tuple[str, ReplicaHealth]] = []
        with self._lock:
            if self._tracked.get(tracked.replica_id) is not tracked:
                return  # untracked or replaced while the probe ran
            before = tracked.transition_key()
            self._judge(tracked, kind, ok, message, self._clock())
            if tracked.transition_key() != before:
                events.append((tracked.replica_id, tracked.snapshot()))
            self._changed.notify_all()
        self._emit(events)

    def _judge(
        self, tracked: _Tracked, kind: ProbeKind, ok: bool | None, message: str, now: float
    ) -> None:
        state = tracked.probes[kind]
        if state.done or tracked.needs_restart:
            return  # a run that was in flight when the verdict fell: it changes nothing
        tracked.last_probe_at = now
        tracked.last_message = f"{kind}: {message}"
        if ok is None:
            return
        threshold = state.schedule.failure_threshold
        if ok:
            state.successes += 1
            state.failures = 0
        else:
            state.failures += 1
            state.successes = 0
        if kind is ProbeKind.STARTUP:
            if ok:
                state.done = True
                self._mark_started(tracked, now)
            elif state.failures >= threshold:
                self._give_up(tracked, f"startup probe failed {state.failures} times: {message}")
        elif kind is ProbeKind.LIVENESS:
            tracked.live_failures = state.failures
            if state.failures >= threshold:
                self._give_up(tracked, f"liveness probe failed {state.failures} times: {message}")
        elif ok and not tracked.ready and state.successes >= state.schedule.success_threshold:
            _become_ready(tracked, now)
        elif not ok and tracked.ready and state.failures >= threshold:
            tracked.ready, tracked.ready_since = False, None
            # Out of the balancer's rotation from the next table on: operators need to
            # see why (kubelet records a "Readiness probe failed" event).
            log.warning(
                "%s (%s) not ready: readiness probe failed %d time(s): %s",
                tracked.instance.name,
                tracked.replica_id,
                state.failures,
                message,
            )

    def _mark_started(self, tracked: _Tracked, now: float) -> None:
        tracked.started = True
        for kind in (ProbeKind.READINESS, ProbeKind.LIVENESS):
            if kind in tracked.probes:
                self._schedule_first(tracked, kind, now)
        self._refresh_probeless_ready(tracked, now)

    def _take_as_ready(self, tracked: _Tracked, now: float) -> None:
        """A replica already in rotation: its startup is over, it is ready from now."""
        startup = tracked.probes.get(ProbeKind.STARTUP)
        if startup is not None:
            startup.done = True
        self._mark_started(tracked, now)
        if not tracked.ready:
            _become_ready(tracked, now)

    def _refresh_probeless_ready(self, tracked: _Tracked, now: float) -> None:
        """Without a readiness probe, ready means running (and started); with one, a
        replica seen not running is not ready at once (no need to wait for failures)."""
        running = tracked.instance.state is InstanceState.RUNNING
        if ProbeKind.READINESS in tracked.probes or tracked.needs_restart:
            if not running and tracked.ready:
                tracked.ready, tracked.ready_since = False, None
                tracked.probes[ProbeKind.READINESS].successes = 0
            return
        if running and tracked.started and not tracked.ready:
            # Ready since it runs, unless a startup probe held it back until now.
            has_startup = ProbeKind.STARTUP in tracked.probes
            _become_ready(tracked, now if has_startup else min(tracked.started_at, now))
        elif not running and tracked.ready:
            tracked.ready, tracked.ready_since = False, None

    def _give_up(self, tracked: _Tracked, message: str) -> None:
        tracked.needs_restart = True
        tracked.ready, tracked.ready_since = False, None
        tracked.last_message = message
        for state in tracked.probes.values():
            state.done = True

    def _emit(self, events: list[tuple[str, ReplicaHealth]]) -> None:
        """Tell the listener (lock not held: it may call back into the monitor)."""
        if self._on_change is None:
            return
        for replica_id, health in events:
            try:
                self._on_change(replica_id, health)
            except Exception:  # a listener's bug must not stop the probes
                log.exception("health listener failed for %s", replica_id)


def _idle(state: _ProbeState) -> Callable[[], bool]:
    """A predicate for Condition.wait_for: no run of ``state`` is in flight."""
    return lambda: not state.running


def _become_ready(tracked: _Tracked, since: float) -> None:
    """Ready from ``since`` (lock held); the first time since it was tracked, too."""
    tracked.ready, tracked.ready_since = True, since
    if tracked.first_ready_at is None:
        tracked.first_ready_at = since
