"""HealthMonitor against the real process driver and a controllable app (apps/health_app.py).

The runtime is wrapped in :class:`RecordingRuntime`, which delegates every probe to the
real :class:`ProcessRuntime` and records it (start, end, result), so the tests count probe
runs exactly. The listener fires in the probe's worker before that probe can run again,
so "how many results were there when readiness flipped" is exact, not sampled.

Periods are fractions of a second through :class:`ProbeSchedule` (the manifest's minimum
is 1 s); one test goes through a real manifest to check port names and initialDelay.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from reconciler_helpers import wait_for
from stall_helpers import StallMeter

from gitorch.apply.health import (
    FIRST_READY_PERIOD,
    HealthMonitor,
    HealthProbes,
    ProbePortUnresolved,
    ProbeSchedule,
    ReplicaHealth,
    UnknownNode,
)
from gitorch.manifests import ManifestLoader, Service
from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    Instance,
    InstanceState,
    PortRequest,
    Probe,
    ProbeResult,
    ReplicaSpec,
)
from gitorch.runtime.process import ProcessRuntime
from gitorch.sources.base import ManifestFile

APP = Path(__file__).parent / "apps" / "health_app.py"
NODE = "n1"
PORT = 8080
HTTP = Probe(http_path="/healthz", port=PORT, timeout_seconds=1.0)
TCP = Probe(tcp=True, port=PORT, timeout_seconds=1.0)
#: The same check as HTTP, told apart by its timeout (probes are compared by value).
HTTP_LIVE = Probe(http_path="/healthz", port=PORT, timeout_seconds=1.5)
#: Generous bound for anything that should happen within a few short periods.
WAIT = 15.0  # generous: CI machines are small and sometimes busy


@dataclass(frozen=True)
class Call:
    instance_id: str
    probe: Probe
    started: float
    ended: float
    ok: bool
    message: str


class RecordingRuntime:
    """The real ProcessRuntime, with every probe recorded (and overlaps measured)."""

    def __init__(self, inner: ProcessRuntime) -> None:
        self.inner = inner
        self.node_name = inner.node_name
        self.driver = inner.driver
        self.calls: list[Call] = []
        self.max_overlap = 0  # most runs at once of one probe of one replica
        #: Called with each recorded run, in the probe's worker, before the monitor judges
        #: it (so before that probe runs again): a test reacts to one result exactly.
        self.after_run: Callable[[Call], None] | None = None
        self._in_flight: Counter[tuple[str, Probe]] = Counter()
        self._lock = threading.Lock()

    def probe(self, instance: Instance, probe: Probe) -> ProbeResult:
        key = (instance.id, probe)
        with self._lock:
            self._in_flight[key] += 1
            self.max_overlap = max(self.max_overlap, self._in_flight[key])
        started = time.time()
        try:
            result = self.inner.probe(instance, probe)
        finally:
            with self._lock:
                self._in_flight[key] -= 1
        call = Call(instance.id, probe, started, time.time(), result.ok, result.message)
        with self._lock:
            self.calls.append(call)
            after_run = self.after_run
        if after_run is not None:
            after_run(call)
        return result

    def runs(self, instance: Instance, probe: Probe | None = None) -> list[Call]:
        with self._lock:
            return [
                c
                for c in self.calls
                if c.instance_id == instance.id and (probe is None or c.probe == probe)
            ]

    def __getattr__(self, name: str) -> Any:  # the rest of the Runtime protocol
        return getattr(self.inner, name)


@dataclass
class App:
    instance: Instance
    health_file: Path

    def set(self, mode: str) -> None:
        """What /healthz answers from now on: ok, fail or hang."""
        tmp = self.health_file.with_suffix(".tmp")
        tmp.write_text(mode)
        tmp.replace(self.health_file)  # atomic: a probe never reads a half-written file


@dataclass
class Kit:
    runtime: RecordingRuntime
    tmp: Path
    cluster: str
    monitors: list[HealthMonitor] = field(default_factory=list)

    def start_app(self, name: str, *, health: str = "ok", start_delay: float = 0.0) -> App:
        health_file = self.tmp / f"{name}.health"
        app = App(
            self.runtime.inner.create(self._spec(name, health_file, start_delay), self.cluster),
            health_file,
        )
        app.set(health)
        return app

    def wait_listening(self, app: App) -> None:
        """Until the app accepts connections (checked with the driver, not recorded)."""
        deadline = time.monotonic() + WAIT
        while not self.runtime.inner.probe(app.instance, TCP).ok:
            assert time.monotonic() < deadline, f"{app.instance.name} never listened"
            time.sleep(0.02)

    def _spec(self, name: str, health_file: Path, start_delay: float) -> ReplicaSpec:
        return ReplicaSpec(
            name=f"{self.cluster}-{name}-1",
            image=None,
            command=(sys.executable, str(APP)),
            env={"HEALTH_FILE": str(health_file), "START_DELAY": str(start_delay)},
            ports=(PortRequest("http", PORT),),
            labels={
                LABEL_SERVICE: name,
                LABEL_REPLICA: "1",
                LABEL_REVISION: "1" * 40,
                LABEL_SPEC_DIGEST: "test",
            },
            stop_grace_seconds=1.0,
        )

    def monitor(self, **kwargs: Any) -> HealthMonitor:
        monitor = HealthMonitor({NODE: self.runtime}, **kwargs)
        self.monitors.append(monitor)
        return monitor


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    inner = ProcessRuntime(NODE, tmp_path / "state", workdir=tmp_path)
    kit = Kit(RecordingRuntime(inner), tmp_path, f"h{uuid.uuid4().hex[:8]}")
    yield kit
    for monitor in kit.monitors:
        monitor.stop()
    for instance in inner.list_instances(kit.cluster):
        inner.remove(instance.id)
    # one probe of one replica never ran twice at once, in any test
    assert kit.runtime.max_overlap <= 1


def schedule(probe: Probe, period: float = 0.1, **kwargs: Any) -> ProbeSchedule:
    return ProbeSchedule(probe=probe, period_seconds=period, **kwargs)


def trailing(calls: list[Call], ok: bool) -> int:
    """How many of the last calls in a row had result ``ok``."""
    count = 0
    for call in reversed(calls):
        if call.ok is not ok:
            break
        count += 1
    return count


Event = tuple[ReplicaHealth, list[Call]]


def recorder(kit: Kit, app: App, probe: Probe) -> tuple[list[Event], Callable[..., None]]:
    """A listener that keeps each transition with the probe results seen at that moment."""
    events: list[Event] = []

    def listen(replica_id: str, health: ReplicaHealth) -> None:
        events.append((health, kit.runtime.runs(app.instance, probe)))

    return events, listen


def load_service(spec_lines: str) -> Service:
    text = (
        f"apiVersion: gitorch.dev/v1\nkind: Service\nmetadata: {{name: api}}\nspec:\n{spec_lines}"
    )
    data = text.encode()
    file = ManifestFile("api.yaml", hashlib.sha1(data).hexdigest(), data)
    result = ManifestLoader().load([file], revision="1" * 40)
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state.services["api"]


# -- readiness ---------------------------------------------------------------------------


def test_readiness_flips_at_its_thresholds(kit: Kit) -> None:
    app = kit.start_app("api", health="ok")
    events, listen = recorder(kit, app, HTTP)
    monitor = kit.monitor(on_change=listen)
    probes = HealthProbes(readiness=schedule(HTTP, success_threshold=2, failure_threshold=3))
    monitor.track_probes("api-1", NODE, app.instance, probes)
    assert monitor.health("api-1") == ReplicaHealth(
        ready=False, ready_since=None, started=True, live_failures=0, needs_restart=False,
        last_message="", last_probe_at=None,
    )  # fmt: skip
    monitor.start()

    assert monitor.wait_ready("api-1", WAIT)
    health, calls = events[-1]
    assert health.ready and trailing(calls, True) == 2  # exactly successThreshold
    assert health.ready_since is not None and calls[-1].ended <= health.ready_since <= time.time()

    app.set("fail")
    health_after = monitor.wait_for("api-1", lambda h: not h.ready, WAIT)
    assert health_after is not None and health_after.ready_since is None
    health, calls = events[-1]
    assert not health.ready and trailing(calls, False) == 3  # exactly failureThreshold
    assert health.last_message == "readiness: HTTP 503"

    app.set("ok")
    assert monitor.wait_ready("api-1", WAIT)
    health, calls = events[-1]
    assert trailing(calls, True) == 2
    assert [h.ready for h, _ in events] == [False, True, False, True]


def test_failures_below_the_threshold_keep_it_ready(kit: Kit) -> None:
    app = kit.start_app("api")
    kit.wait_listening(app)  # no failures before the first ready (those run faster)
    events, listen = recorder(kit, app, HTTP)
    monitor = kit.monitor(on_change=listen)
    monitor.track_probes(
        "api-1", NODE, app.instance, HealthProbes(readiness=schedule(HTTP, failure_threshold=5))
    )
    monitor.start()
    assert monitor.wait_ready("api-1", WAIT)
    app.set("fail")
    assert monitor.wait_for("api-1", lambda h: h.last_message.endswith("503"), WAIT)
    app.set("ok")  # within a period of the first failure: far from 5 in a row
    assert monitor.wait_for("api-1", lambda h: h.last_message.endswith("200"), WAIT)
    results = [c.ok for c in kit.runtime.runs(app.instance)]
    longest_failing = max(
        len(run) for run in "".join("x" if ok else "f" for ok in results).split("x")
    )
    assert 1 <= longest_failing < 5
    assert [h.ready for h, _ in events] == [False, True]  # it never stopped being ready


def test_a_replica_in_rotation_when_first_seen_is_judged_as_a_ready_one(kit: Kit) -> None:
    """A daemon adopting its predecessor's replicas (``serving``): one failed first probe
    (a busy host's timeout) keeps it ready; failureThreshold failures in a row do not. Its
    startup probe is over (it was serving)."""
    app = kit.start_app("api", health="fail")
    kit.wait_listening(app)
    events, listen = recorder(kit, app, HTTP)
    monitor = kit.monitor(on_change=listen)
    probes = HealthProbes(
        startup=schedule(TCP, failure_threshold=50),
        readiness=schedule(HTTP, period=0.3, failure_threshold=3),
    )
    monitor.track_probes("api-1", NODE, app.instance, probes, serving=True)
    adopted = monitor.health("api-1")
    assert adopted is not None and adopted.ready and adopted.started
    assert adopted.first_ready_at is not None
    after_one = monitor.observe_now("api-1")  # the reconciler's first look: it fails
    assert after_one is not None and after_one.ready, after_one
    assert after_one.last_message == "readiness: HTTP 503"
    monitor.start()
    assert monitor.wait_for("api-1", lambda h: not h.ready, WAIT)
    assert trailing(kit.runtime.runs(app.instance, HTTP), False) == 3
    assert not kit.runtime.runs(app.instance, TCP), "no startup probe: it had started"
    assert [h.ready for h, _ in events] == [True, False]


def test_a_replica_not_running_when_first_seen_is_not_taken_as_ready(kit: Kit) -> None:
    app = kit.start_app("api")
    kit.wait_listening(app)
    stopped = replace(app.instance, state=InstanceState.EXITED)
    monitor = kit.monitor()
    monitor.track_probes(
        "api-1", NODE, stopped, HealthProbes(readiness=schedule(HTTP)), serving=True
    )
    health = monitor.health("api-1")
    assert health is not None and not health.ready


def test_replica_without_probes_is_ready_when_running(kit: Kit) -> None:
    service = load_service('  command: ["x"]\n')
    app = kit.start_app("plain")
    monitor = kit.monitor()
    monitor.track("plain-1", NODE, app.instance, service)
    health = monitor.health("plain-1")
    assert health is not None and health.ready and health.started
    assert health.ready_since == app.instance.started_at  # ready since it runs
    assert monitor.observe_now("plain-1") == health  # nothing to probe

    kit.runtime.inner.stop(app.instance.id, grace_seconds=1.0)
    exited = kit.runtime.inner.inspect(app.instance.id)
    assert exited.state is InstanceState.EXITED
    monitor.track("plain-1", NODE, exited, service)  # the reconciler's fresh observation
    health = monitor.health("plain-1")
    assert health is not None and not health.ready and health.ready_since is None
    assert kit.runtime.calls == []


def test_a_replica_seen_exited_is_not_ready_at_once(kit: Kit) -> None:
    app = kit.start_app("api")
    kit.wait_listening(app)
    monitor = kit.monitor()  # not started: observe_now alone drives it
    probes = HealthProbes(readiness=schedule(HTTP, 30.0, failure_threshold=3))
    monitor.track_probes("api-1", NODE, app.instance, probes)
    health = monitor.observe_now("api-1")
    assert health is not None and health.ready

    kit.runtime.inner.stop(app.instance.id, grace_seconds=1.0)
    monitor.track_probes("api-1", NODE, kit.runtime.inner.inspect(app.instance.id), probes)
    health = monitor.health("api-1")
    assert health is not None and not health.ready  # without waiting for 3 failures
    assert len(kit.runtime.runs(app.instance)) == 1


# -- timing ------------------------------------------------------------------------------


def test_manifest_probe_ports_and_initial_delay(kit: Kit) -> None:
    service = load_service(
        '  command: ["x"]\n'
        "  ports: [{name: http, containerPort: 8080}]\n"
        "  readinessProbe: {httpGet: {path: /healthz, port: http}, initialDelaySeconds: 1,"
        " periodSeconds: 1, timeoutSeconds: 2}\n"
    )
    probes = HealthProbes.from_service(service)
    assert probes.readiness == ProbeSchedule(
        Probe(http_path="/healthz", port=8080, timeout_seconds=2.0),
        initial_delay_seconds=1.0,
        period_seconds=1.0,
    )
    app = kit.start_app("api")
    assert app.instance.started_at is not None
    monitor = kit.monitor()
    monitor.track("api-1", NODE, app.instance, service)
    monitor.start()
    assert monitor.observe_now("api-1") == monitor.health("api-1")  # inside the delay: no run
    assert monitor.wait_ready("api-1", WAIT)
    first = kit.runtime.runs(app.instance)[0]
    assert first.started >= app.instance.started_at + 1.0
    assert first.started < app.instance.started_at + 1.5  # and not a period late


def test_probe_runs_keep_their_period(kit: Kit) -> None:
    app = kit.start_app("api")
    kit.wait_listening(app)  # ready at the first run: from then on, its own period
    monitor = kit.monitor()
    monitor.track_probes("api-1", NODE, app.instance, HealthProbes(readiness=schedule(HTTP, 0.2)))
    with StallMeter() as stalls:
        monitor.start()
        time.sleep(1.1)
        monitor.stop()
    calls = kit.runtime.runs(app.instance)
    starts = [c.started for c in calls]
    assert 5 <= len(starts) <= 7 or stalls.worst > 0.1, (starts, stalls.worst)  # t = 0, ..., 1.0
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # Never early; late by at most the probe's own run and however late this process's
    # threads were woken meanwhile (a run scheduled from the previous run's end, or a
    # missed period, would be 0.4 s late even on a quiet machine).
    slowest_run = max(c.ended - c.started for c in calls)
    assert all(0.19 <= gap < 0.3 + slowest_run + stalls.worst for gap in gaps), (
        gaps,
        slowest_run,
        stalls.worst,
    )


# -- startup and liveness ----------------------------------------------------------------


def test_startup_probe_gates_readiness_and_liveness(kit: Kit) -> None:
    app = kit.start_app("slow", start_delay=0.8)
    events, listen = recorder(kit, app, TCP)
    monitor = kit.monitor(on_change=listen)
    probes = HealthProbes(
        startup=schedule(TCP, failure_threshold=50),
        # would need a restart at its first failure if it ran during the slow start
        liveness=schedule(HTTP_LIVE, failure_threshold=1),
    )
    monitor.track_probes("slow-1", NODE, app.instance, probes)
    assert monitor.health("slow-1") == ReplicaHealth(
        ready=False, ready_since=None, started=False, live_failures=0, needs_restart=False,
        last_message="", last_probe_at=None,
    )  # fmt: skip
    monitor.start()

    assert monitor.wait_ready("slow-1", WAIT)  # no readiness probe: ready once started
    startup = kit.runtime.runs(app.instance, TCP)
    assert trailing(startup, True) == 1 and len(startup) >= 3  # it failed while starting
    assert startup[0].message.endswith("Connection refused")
    (started_event,) = [h for h, _ in events if h.started]
    assert started_event.ready  # started and ready in one transition

    assert monitor.wait_for("slow-1", lambda h: h.last_message == "liveness: HTTP 200", WAIT)
    liveness = kit.runtime.runs(app.instance, HTTP_LIVE)
    assert liveness and all(c.ok for c in liveness)
    assert liveness[0].started >= startup[-1].ended  # nothing judged before startup passed
    assert liveness[0].started - startup[-1].ended < 0.1  # and at once, not a period later
    health = monitor.health("slow-1")
    assert health is not None and health.started and not health.needs_restart
    time.sleep(0.25)
    assert len(kit.runtime.runs(app.instance, TCP)) == len(startup)  # startup ran its course


def test_startup_that_never_passes_needs_restart(kit: Kit) -> None:
    app = kit.start_app("stuck", health="fail")
    monitor = kit.monitor()
    probes = HealthProbes(
        startup=schedule(HTTP, failure_threshold=3),
        readiness=schedule(TCP),
        liveness=schedule(HTTP_LIVE),
    )
    monitor.track_probes("stuck-1", NODE, app.instance, probes)
    monitor.start()
    health = monitor.wait_for("stuck-1", lambda h: h.needs_restart, WAIT)
    assert health is not None and not health.started and not health.ready
    # 503 once the app listens; "connection refused" if a loaded machine starts it late.
    assert health.last_message.startswith("startup probe failed 3 times: ")
    time.sleep(0.3)
    calls = kit.runtime.runs(app.instance)
    assert [c.probe for c in calls] == [HTTP, HTTP, HTTP]  # nothing else, nothing more


def test_liveness_failures_in_a_row_need_a_restart(kit: Kit) -> None:
    app = kit.start_app("api")
    # Failures before it listens would count too (there is no initialDelay here): on a
    # busy host the app took longer than three periods to listen and was given up on.
    kit.wait_listening(app)
    events, listen = recorder(kit, app, HTTP_LIVE)
    monitor = kit.monitor(on_change=listen)
    probes = HealthProbes(
        readiness=schedule(HTTP), liveness=schedule(HTTP_LIVE, failure_threshold=3)
    )
    monitor.track_probes("api-1", NODE, app.instance, probes)
    monitor.start()
    assert monitor.wait_ready("api-1", WAIT)

    # One failed liveness run, then a success resets the count. The app answers ok again
    # from inside the failed run's worker, before the next liveness run: flipping it from
    # here instead raced the probes (two more periods of 0.1 s, and a busy host let three
    # failures pass before the flip: a restart the test did not mean).
    def heal_after_one_failure(call: Call) -> None:
        if call.probe == HTTP_LIVE and not call.ok:
            kit.runtime.after_run = None
            app.set("ok")

    before = len(kit.runtime.runs(app.instance, HTTP_LIVE))

    def failed_once_then_passed() -> bool:
        results = [c.ok for c in kit.runtime.runs(app.instance, HTTP_LIVE)[before:]]
        return False in results and True in results[results.index(False) :]

    kit.runtime.after_run = heal_after_one_failure
    app.set("fail")
    wait_for(
        "one failed liveness run, then a passed one",
        failed_once_then_passed,
        WAIT,
        describe=lambda: repr(
            [(c.ok, c.message) for c in kit.runtime.runs(app.instance, HTTP_LIVE)[before:]]
        ),
    )
    # the passed run is judged right after it is recorded
    health = monitor.wait_for("api-1", lambda h: h.live_failures == 0, WAIT)
    runs = [(c.ok, c.message) for c in kit.runtime.runs(app.instance, HTTP_LIVE)]
    assert health is not None and not health.needs_restart, runs

    app.set("fail")
    health = monitor.wait_for("api-1", lambda h: h.needs_restart, WAIT)
    assert health is not None
    assert health.live_failures == 3 and not health.ready  # it waits to be replaced
    assert health.last_message == "liveness probe failed 3 times: HTTP 503"
    restart_event, calls = events[-1]
    assert restart_event.needs_restart and trailing(calls, False) == 3
    assert health.last_probe_at is not None
    time.sleep(0.3)
    # no probe of it started any more (a readiness run in flight then may still finish)
    assert all(c.started < health.last_probe_at for c in kit.runtime.runs(app.instance))
    assert monitor.health("api-1") == health


# -- handlers ----------------------------------------------------------------------------


def test_tcp_probe(kit: Kit) -> None:
    app = kit.start_app("api", start_delay=0.5)
    monitor = kit.monitor()
    monitor.track_probes("api-1", NODE, app.instance, HealthProbes(readiness=schedule(TCP)))
    monitor.start()
    assert monitor.wait_ready("api-1", WAIT)
    calls = kit.runtime.runs(app.instance)
    assert not calls[0].ok and calls[-1].ok
    assert calls[-1].message.startswith("tcp 127.0.0.1:") and calls[-1].message.endswith("open")


def test_exec_probe(kit: Kit) -> None:
    app = kit.start_app("api", health="fail")
    check = Probe(exec_command=("grep", "-qx", "ok", str(app.health_file)), timeout_seconds=1.0)
    monitor = kit.monitor()
    monitor.track_probes("api-1", NODE, app.instance, HealthProbes(readiness=schedule(check)))
    monitor.start()
    assert monitor.wait_for("api-1", lambda h: h.last_message == "readiness: exit 1", WAIT)
    assert not monitor.wait_ready("api-1", 0.3)
    app.set("ok")
    assert monitor.wait_ready("api-1", WAIT)
    health = monitor.health("api-1")
    assert health is not None and health.last_message == "readiness: exit 0"


# -- lifecycle ---------------------------------------------------------------------------


def test_untrack_stops_probing(kit: Kit) -> None:
    app = kit.start_app("api")
    monitor = kit.monitor()
    monitor.track_probes("api-1", NODE, app.instance, HealthProbes(readiness=schedule(HTTP, 0.05)))
    monitor.start()
    assert monitor.wait_for("api-1", lambda h: h.last_probe_at is not None, WAIT)
    time.sleep(0.2)
    monitor.untrack("api-1")
    count = len(kit.runtime.runs(app.instance))
    assert count >= 3
    time.sleep(0.3)
    assert len(kit.runtime.runs(app.instance)) <= count + 1  # at most the one in flight
    assert monitor.health("api-1") is None and monitor.tracked() == []
    assert monitor.observe_now("api-1") is None


def test_tracking_again_keeps_or_resets_counters(kit: Kit) -> None:
    app = kit.start_app("api")
    monitor = kit.monitor()
    probes = HealthProbes(readiness=schedule(HTTP, 30.0))  # runs once, then not for 30 s
    monitor.track_probes("api-1", NODE, app.instance, probes)
    health = monitor.observe_now("api-1")
    while health is not None and not health.ready:  # the app may not listen yet
        time.sleep(0.05)
        health = monitor.observe_now("api-1")
    assert health is not None and health.ready

    monitor.track_probes("api-1", NODE, app.instance, probes)  # same instance: kept
    assert monitor.health("api-1") == health

    other = kit.start_app("api2")
    monitor.track_probes("api-1", NODE, other.instance, probes)  # a new instance: new replica
    fresh = monitor.health("api-1")
    assert fresh is not None and not fresh.ready and fresh.last_probe_at is None

    with pytest.raises(UnknownNode):
        monitor.track_probes("api-1", "elsewhere", other.instance, probes)


def test_observe_now_reacts_before_the_next_period(kit: Kit) -> None:
    app = kit.start_app("api")
    kit.wait_listening(app)
    monitor = kit.monitor()
    # ready at the first run (at once), the next one only in a minute
    probes = HealthProbes(readiness=schedule(HTTP, 60, failure_threshold=1))
    monitor.track_probes("api-1", NODE, app.instance, probes)
    monitor.start()
    assert monitor.wait_ready("api-1", WAIT)
    app.set("fail")
    time.sleep(0.3)
    health = monitor.health("api-1")
    assert health is not None and health.ready  # it fails now, but no run is due
    health = monitor.observe_now("api-1")
    assert health is not None and not health.ready
    assert [c.ok for c in kit.runtime.runs(app.instance)] == [True, False]


def test_readiness_runs_fast_until_first_ready_then_at_its_period(kit: Kit) -> None:
    app = kit.start_app("api", start_delay=0.6)
    monitor = kit.monitor()
    monitor.track_probes("api-1", NODE, app.instance, HealthProbes(readiness=schedule(TCP, 60)))
    monitor.start()
    assert monitor.wait_ready("api-1", WAIT)
    runs = kit.runtime.runs(app.instance)
    # Not listening for 0.6 s: runs every FIRST_READY_PERIOD until it answers, then none
    # for its period of a minute.
    assert [c.ok for c in runs][-1] is True and len(runs) >= 3
    gaps = [b.started - a.started for a, b in zip(runs, runs[1:], strict=False)]
    assert all(FIRST_READY_PERIOD * 0.9 <= gap < 0.5 for gap in gaps), gaps
    time.sleep(0.5)
    assert len(kit.runtime.runs(app.instance)) == len(runs)


def test_stop_is_prompt_with_probes_in_flight_and_start_resumes(kit: Kit) -> None:
    hung, fast = kit.start_app("hung", health="hang"), kit.start_app("fast")
    for app in (hung, fast):
        kit.wait_listening(app)
    slow = Probe(http_path="/healthz", port=PORT, timeout_seconds=5.0)
    monitor = kit.monitor()
    monitor.track_probes("hung-1", NODE, hung.instance, HealthProbes(readiness=schedule(slow)))
    monitor.track_probes("fast-1", NODE, fast.instance, HealthProbes(readiness=schedule(HTTP)))
    monitor.start()
    time.sleep(0.3)  # the slow probe is in flight, waiting for an answer that does not come
    began = time.monotonic()
    monitor.stop()
    stopped_at = time.time()
    assert time.monotonic() - began < 0.5
    time.sleep(0.3)
    assert not kit.runtime.runs(hung.instance)  # still in flight, not waited for
    fast_runs = kit.runtime.runs(fast.instance)
    assert len(fast_runs) >= 2 and all(c.started <= stopped_at for c in fast_runs)

    monitor.start()  # the schedule survives a stop
    assert monitor.wait_for("fast-1", lambda h: (h.last_probe_at or 0) > stopped_at + 0.3, WAIT)


def test_a_slow_probe_does_not_delay_the_others(kit: Kit) -> None:
    hung = [kit.start_app(f"hung{i}", health="hang") for i in range(3)]
    fast = kit.start_app("fast")
    for app in [*hung, fast]:
        kit.wait_listening(app)
    slow = Probe(http_path="/healthz", port=PORT, timeout_seconds=1.0)
    monitor = kit.monitor(workers=4)
    for i, app in enumerate(hung):
        monitor.track_probes(
            f"hung{i}-1", NODE, app.instance, HealthProbes(readiness=schedule(slow, 0.1))
        )
    monitor.track_probes("fast-1", NODE, fast.instance, HealthProbes(readiness=schedule(HTTP)))
    began = time.time()
    monitor.start()
    time.sleep(1.5)
    monitor.stop()

    hung_calls = [c for app in hung for c in kit.runtime.runs(app.instance)]
    first = hung_calls[:3]
    # the three hung probes ran side by side, each until its 1 s timeout
    starts = sorted(c.started for c in hung_calls)
    assert len(starts) >= 3 and starts[2] - began < 0.3
    assert all(not c.ok and "timed out" in c.message for c in first)
    assert all(c.ended - c.started >= 0.95 for c in first)
    # meanwhile the fast one kept its 0.1 s period
    fast_calls = kit.runtime.runs(fast.instance)
    assert len(fast_calls) >= 10
    assert (
        max(b.started - a.started for a, b in zip(fast_calls, fast_calls[1:], strict=False)) < 0.3
    )


# -- pure parts --------------------------------------------------------------------------


def test_probes_from_a_manifest() -> None:
    service = load_service(
        '  command: ["x"]\n'
        "  ports: [{name: web, containerPort: 9000}, {name: admin, containerPort: 9001}]\n"
        "  readinessProbe: {httpGet: {path: /ready, port: admin}}\n"
        "  livenessProbe: {tcpSocket: {port: 9000}, failureThreshold: 5, periodSeconds: 3}\n"
        "  startupProbe: {exec: {command: [test, -e, /tmp/up]}, timeoutSeconds: 4}\n"
    )
    probes = HealthProbes.from_service(service)
    assert probes.readiness is not None and probes.liveness is not None
    assert probes.startup is not None
    assert probes.readiness.probe == Probe(http_path="/ready", port=9001, timeout_seconds=1.0)
    assert probes.readiness.period_seconds == 10.0  # the model's default
    assert probes.liveness.probe == Probe(tcp=True, port=9000, timeout_seconds=1.0)
    assert (probes.liveness.period_seconds, probes.liveness.failure_threshold) == (3.0, 5)
    assert probes.startup.probe == Probe(
        exec_command=("test", "-e", "/tmp/up"), timeout_seconds=4.0
    )
    assert HealthProbes.from_service(load_service('  command: ["x"]\n')) == HealthProbes()


def test_unresolvable_port_and_bad_schedules_are_refused() -> None:
    service = load_service('  command: ["x"]\n  ports: [{name: web, containerPort: 9000}]\n')
    from gitorch.manifests.model import Probe as ModelProbe

    with pytest.raises(ProbePortUnresolved, match="'admin'"):
        ProbeSchedule.from_model(ModelProbe(http_path="/", http_port="admin"), service)
    for bad in ({"period_seconds": 0}, {"failure_threshold": 0}, {"initial_delay_seconds": -1}):
        with pytest.raises(ValueError):
            ProbeSchedule(probe=HTTP, **bad)
    with pytest.raises(ValueError):
        HealthMonitor({}, workers=0)
