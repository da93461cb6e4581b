"""The executor's order around the routing table's publication (issue 20).

A pass that withdraws no replica starts its new ones beside the publication (they join
the table once ready, in a later pass, and start whether or not it is applied): a
commit's first replicas no longer wait for the data plane's round trip. A rolling
update's wave starts its new replicas beside the publication that withdraws the old ones
(terminating once withdrawn, they do not hold maxSurge's room), and stops the old ones
only once that publication is applied.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from decide_helpers import healthy_record

from gitorch.apply.execute import Executor
from gitorch.decide import PassInput, decide_pass
from gitorch.live.model import AppliedSpec, LiveNode, LiveReplica, LiveService, LiveState
from gitorch.manifests import ManifestLoader
from gitorch.manifests.model import DesiredState
from gitorch.runtime.base import Instance, InstanceState
from gitorch.state.records import RolloutPhase, RolloutRecord
from gitorch.traffic.table import RoutingTable

REVISION = "b" * 40
NOW = 10_000.0


class _File:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.data = path, text.encode()
        self.blob_id = hashlib.sha1(self.data).hexdigest()


def _desired(version: str, replicas: int) -> DesiredState:
    doc = f"""apiVersion: gitorch.dev/v1
kind: Service
metadata: {{name: api}}
spec:
  command: ["app", "{version}"]
  replicas: {replicas}
  ports: [{{name: http, containerPort: 8080}}]
  expose: {{port: 18080, targetPort: http, protocol: http}}
  readinessProbe:
    httpGet: {{path: /healthz, port: http}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {{maxSurge: 2, maxUnavailable: 0}}
"""
    result = ManifestLoader().load([_File("api.yaml", doc)], revision=REVISION)
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state


def _replica(state: DesiredState, slot: int) -> LiveReplica:
    return LiveReplica(
        id=f"api-{slot}-{state.services['api'].template_digest[:6]}",
        name=f"c-api-{slot}",
        service="api",
        replica=f"api-{slot}",
        node="n1",
        revision=REVISION,
        template_digest=state.services["api"].template_digest,
        state="running",
        started_at=1.0,
        ready=True,
        ready_since=1.0,
        ports=MappingProxyType({"http": f"127.0.0.1:{20000 + slot}"}),
    )


def _decide(desired: DesiredState, replicas: list[LiveReplica], record: RolloutRecord) -> Any:
    applied = AppliedSpec(REVISION, record.spec_digest, record.spec, str(record.phase))
    live = LiveState(
        "c",
        NOW,
        MappingProxyType({"n1": LiveNode("n1", "process", True, "127.0.0.1", 8000, 2**34)}),
        MappingProxyType({"api": LiveService("api", applied, tuple(replicas))}),
    )
    return decide_pass(
        PassInput(
            desired=desired,
            live=live,
            now=NOW,
            records=MappingProxyType({"api": record}),
            applied_services=frozenset({"api"}),
        )
    )


class _Trace:
    """The order of the executor's calls, with a publication that takes a while."""

    def __init__(self, apply_seconds: float) -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()
        self.apply_seconds = apply_seconds
        self.started = threading.Event()

    def note(self, what: str) -> None:
        with self.lock:
            self.events.append(what)


class _Runtime:
    driver = "process"

    def __init__(self, trace: _Trace) -> None:
        self.trace = trace

    def create(self, spec: Any, cluster: str) -> Instance:
        self.trace.note(f"create {spec.name}")
        self.trace.started.set()
        return Instance(
            id=f"new-{spec.name}",
            name=spec.name,
            node="n1",
            state=InstanceState.RUNNING,
            labels={},
        )

    def stop(self, instance_id: str, grace_seconds: float) -> None:
        self.trace.note(f"stop {instance_id}")

    def remove(self, instance_id: str) -> None:
        self.trace.note(f"remove {instance_id}")


class _Health:
    def track(self, *args: Any) -> None:
        pass

    def untrack(self, replica_id: str) -> None:
        pass

    def health(self, replica_id: str) -> None:
        return None


class _DataPlane:
    def __init__(self, trace: _Trace) -> None:
        self.trace = trace

    def apply(self, table: RoutingTable) -> None:
        self.trace.note("publish")
        # The data plane's round trip; a start beside it shows up meanwhile.
        self.trace.started.wait(self.trace.apply_seconds)
        time.sleep(0.05)
        self.trace.note("published")

    def backend_stats(self, service: str, backend_id: str) -> None:
        return None


def _executor(trace: _Trace) -> Executor:
    return Executor(
        runtimes={"n1": _Runtime(trace)},  # type: ignore[dict-item]
        health=_Health(),  # type: ignore[arg-type]
        dataplane=_DataPlane(trace),  # type: ignore[arg-type]
        cluster="c",
    )


def test_starts_run_beside_the_publication_when_nothing_leaves_the_table() -> None:
    """A rollout's first wave (maxUnavailable 0): two new replicas, nothing stopped."""
    old = _desired("1", 4)
    new = _desired("2", 4)
    decision = _decide(
        new, [_replica(old, s) for s in range(1, 5)], healthy_record(old, "api", REVISION)
    )
    assert len(decision.starts.get("api", ())) == 2 and not decision.stops()
    trace = _Trace(apply_seconds=5.0)
    done = _executor(trace).run(new, decision)
    assert not done.errors and len(done.started) == 2
    assert trace.events[0] == "publish" or trace.events[0].startswith("create")
    assert trace.events.index("published") > min(
        i for i, e in enumerate(trace.events) if e.startswith("create")
    ), trace.events
    assert done.published is not None


def test_a_wave_starts_beside_the_publication_that_withdraws_and_stops_after_it() -> None:
    """A later wave: two new replicas ready, two old ones leave and two more new start.
    The leaving ones are terminating once withdrawn (maxSurge's room is theirs): the new
    ones start beside that publication; the old ones are drained and stopped only once
    it is applied, then removed after the starts."""
    old = _desired("1", 4)
    new = _desired("2", 4)
    replicas = [_replica(old, s) for s in range(1, 5)]
    replicas += [replace(_replica(new, s), replica=f"api-{s}") for s in (5, 6)]
    record = replace(
        healthy_record(new, "api", REVISION),
        phase=RolloutPhase.PROGRESSING,
        available=4,
        reached_healthy=False,
    )
    decision = _decide(new, replicas, record)
    stops = [s for s in decision.stops() if s.drain]
    assert len(stops) == 2 and len(decision.starts.get("api", ())) == 2, decision.actions()
    assert all(s.terminating_frees_room for s in stops)
    trace = _Trace(apply_seconds=5.0)
    done = _executor(trace).run(new, decision)
    assert not done.errors, done.errors
    events = trace.events
    published = events.index("published")
    creates = [i for i, e in enumerate(events) if e.startswith("create")]
    stopped = [i for i, e in enumerate(events) if e.startswith("stop")]
    removed = [i for i, e in enumerate(events) if e.startswith("remove")]
    assert len(creates) == 2 and len(stopped) == 2 and len(removed) == 2, events
    assert min(creates) < published < min(stopped), events
    assert max(creates) < min(removed), events
