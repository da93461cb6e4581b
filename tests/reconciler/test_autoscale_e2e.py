"""Horizontal autoscaling end to end (issue 17, "What must hold"): a CPU-bound service at
min 1, max 4, target 50% of its cpu request, run by a real daemon on the process driver
(cgroup usage), loaded with ``hey`` through the built-in balancer. It scales out within
two sync periods, back to 1 after the load stops and the (short) stabilization window
passes, with 0 failed requests meanwhile; every change is in the audit log, ``/metrics``,
``gitorch status`` and ``gitorch plan`` (never as drift).
"""

from __future__ import annotations

import http.client
import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from reconciler_helpers import (
    CANARY_PAUSED_AT_HALF,
    REPO_ROOT,
    Cluster,
    DaemonProc,
    commit,
    docker_service,
    gitorch,
    process_service,
    wait_for,
)

from gitorch.state import StateStore

pytestmark = pytest.mark.slow

#: The daemon's --autoscale-sync in this test.
SYNC = 4.0
#: behavior.scaleDown.stabilizationWindowSeconds in this test.
STABILIZATION = 10
#: What a loaded shared machine may add to a deadline (a sync that runs late).
SLACK = 4.0

BURN_APP = f"""
import hashlib
import sys

sys.path.insert(0, {str(REPO_ROOT / "examples" / "apps")!r})
from common.server import AppSpec, Reply, main


def build(settings):
    def burn():
        data = b"x"
        for _ in range(20000):  # about 20 ms of one core
            data = hashlib.sha256(data).digest()
        return Reply(200, data.hex() + "\\n", "text/plain")

    return AppSpec(settings=settings, routes={{"/burn": burn}})


main("burn", build)
"""


#: The autoscale block of the CPU tests (min 1, max 4, 50% of a 100m request).
AUTOSCALE_CPU = f"""  autoscale:
    minReplicas: 1
    maxReplicas: 4
    metrics:
      - {{type: cpu, targetAverageUtilization: 50}}
    behavior:
      scaleDown: {{stabilizationWindowSeconds: {STABILIZATION}}}
"""


def burn_service(app: Path, port: int) -> str:
    return f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: burn
spec:
  command: ["python3", "{app}"]
  replicas: 1
  ports:
    - {{name: http, containerPort: 8080}}
  expose: {{port: {port}, targetPort: http, protocol: http}}
  resources:
    requests: {{cpu: 100m, memory: 64Mi}}
  readinessProbe:
    # A saturated replica answers its probe late: Kubernetes' default threshold (3), so
    # that a busy replica is not taken out of the balancer (busy is not broken).
    httpGet: {{path: /healthz, port: http}}
    periodSeconds: 1
    timeoutSeconds: 2
    failureThreshold: 3
  terminationGracePeriodSeconds: 5
{AUTOSCALE_CPU}"""


@dataclass
class PacedClient:
    """One request to a cheap page every 200 ms for the whole test: a failed request
    while replicas start and drain would show here (hey only runs during the load). Light
    enough (a few millicores) to let the service scale back to 1."""

    port: int
    path: str = "/healthz"
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                if 200 <= resp.status < 300:
                    self.ok += 1
                else:
                    self.failures.append(f"HTTP {resp.status}")
            except OSError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            finally:
                conn.close()


def hey_codes(output: str) -> dict[int, int]:
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", output)}
    errors = re.search(r"Error distribution:\n((?:\s+\[\d+\].*\n?)+)", output)
    codes[0] = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors.group(1))) if errors else 0
    return codes


@contextmanager
def hey_running(*args: str) -> Iterator[subprocess.Popen[str]]:
    """``hey ARGS`` in the background for the block; killed if still running after it."""
    load = subprocess.Popen(
        ["hey", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield load
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)


def hey_all_ok(load: subprocess.Popen[str]) -> dict[int, int]:
    """Wait for ``hey`` to end; every request it sent answered 200 (its counts by code)."""
    output, _ = load.communicate(timeout=90)
    codes = hey_codes(output)
    assert codes.get(200, 0) > 0, output
    assert sum(n for c, n in codes.items() if c != 200) == 0, output
    return codes


def autoscale(daemon: DaemonProc, name: str = "burn") -> dict[str, Any]:
    """The service's autoscale status with its running and ready counts ({} before it is
    applied)."""
    svc = daemon.service(name)
    if svc is None or svc["autoscale"] is None:
        return {"desired": None, "running": 0, "ready": 0, "metrics": []}
    replicas = svc["replicas"]
    return {**svc["autoscale"], "running": replicas["running"], "ready": replicas["ready"]}


def scaled(state: Path | str) -> str:
    """The autoscaler's audit entries so far, for failure messages."""
    with StateStore(state, readonly=True) as store:
        events = store.list_events(kind="autoscale.scaled", newest_first=False, limit=None)
    return "\n".join(f"{e.at:.1f} {e.message}" for e in events)


@pytest.mark.store_incidental  # scaling under load; the etcd path: the rps test below
def test_a_cpu_bound_service_scales_out_under_load_and_back_in(cluster: Cluster) -> None:
    app = cluster.root / "burn.py"
    app.write_text(BURN_APP, encoding="utf-8")
    scale_out_and_back(cluster, burn_service(app, cluster.port), "/burn", "/healthz")


@pytest.mark.docker
def test_a_busy_container_scales_out_under_load_and_back_in(docker_cluster: Cluster) -> None:
    # busybox httpd forks a CGI shell per request: the load is the container's cpu, read
    # from Docker's stats.
    service = docker_service(
        "burn", port=docker_cluster.port, image="gitorch-example/api:1", replicas=1
    )
    service = service.replace(  # as burn_service: busy is not broken
        "timeoutSeconds: 1\n    failureThreshold: 1", "timeoutSeconds: 2\n    failureThreshold: 3"
    )
    assert "failureThreshold: 3" in service
    service += "  resources: {requests: {cpu: 100m, memory: 64Mi}}\n" + AUTOSCALE_CPU
    scale_out_and_back(docker_cluster, service, "/cgi-bin/items", "/cgi-bin/healthz")


def scale_out_and_back(cluster: Cluster, service: str, load_path: str, light_path: str) -> None:
    """The service ``burn`` (min 1, max 4, cpu 50%) under hey on ``load_path``, then idle;
    a paced client reads ``light_path`` all along."""
    if shutil.which("hey") is None:
        pytest.fail("hey is not installed (Debian's package hey; .ci/run installs it)")
    port = cluster.port
    commit(cluster.repo, {"burn.yaml": service}, "a CPU-bound service")
    daemon = cluster.daemon(extra=["--autoscale-sync", f"{SYNC:g}s"])
    wait_for(
        "one ready replica and a first autoscaler decision",
        lambda: (a := autoscale(daemon))["ready"] == 1 and a["desired"] == 1,
        60,
        describe=daemon.log_tail,
    )

    client = PacedClient(port, light_path)
    client.start()
    with hey_running("-c", "6", "-z", "30s", f"http://127.0.0.1:{port}{load_path}") as load:
        started = time.monotonic()
        wait_for(
            "the autoscaler to scale out",
            lambda: (autoscale(daemon)["desired"] or 0) > 1,
            2 * SYNC + SLACK,
            describe=lambda: (
                f"{autoscale(daemon)}\n{scaled(cluster.store_location)}\n{daemon.log_tail()}"
            ),
        )
        scaled_out_after = time.monotonic() - started
        peak = autoscale(daemon)
        assert peak["desired"] <= 4
        assert any(m["metric"] == "cpu" and m["value"] > 50 for m in peak["metrics"]), peak
        # The new replicas go through placement and readiness, then serve.
        wait_for(
            "the scaled-out replicas to be ready",
            lambda: (a := autoscale(daemon))["ready"] >= 2 and a["ready"] == a["running"],
            30,
            describe=lambda: (
                f"{autoscale(daemon)}\n{scaled(cluster.store_location)}\n{daemon.log_tail()}"
            ),
        )
        codes = hey_all_ok(load)

    # The load stopped: back to 1 once the stabilization window has passed (and the
    # drained replicas are gone), with requests still answered all along.
    stopped, stopped_at = time.monotonic(), time.time()
    wait_for(
        "the autoscaler to scale back to 1",
        lambda: (a := autoscale(daemon))["desired"] == 1 and a["running"] == 1,
        STABILIZATION + 3 * SYNC + 10 + SLACK,
        describe=lambda: (
            f"{autoscale(daemon)}\n{scaled(cluster.store_location)}\n{daemon.log_tail()}"
        ),
    )
    scaled_in_after = time.monotonic() - stopped
    client.stop()
    assert client.failures == [] and client.ok > 0, client.failures[:5]

    # Audited: every change with its metric, value, target, from and to.
    with StateStore(cluster.store_location, readonly=True) as store:
        events = store.list_events(kind="autoscale.scaled", newest_first=False, limit=None)
    assert events[0].data["from"] == 1 and events[0].data["to"] > 1
    assert events[0].data["metric"] == "cpu" and events[0].data["target"] == 50
    assert events[-1].data["to"] == 1 and events[-1].actor == "gitorch"
    # Not before the window: the last high recommendation came at most one sync before
    # the load stopped, and the count stays up for the window after it.
    assert events[-1].at >= stopped_at - SYNC + STABILIZATION - 0.5, [e.message for e in events]

    code, metrics = daemon.request("GET", "/metrics")
    assert code == 200
    assert 'gitorch_autoscale_replicas{kind="desired",service="burn"} 1.0' in metrics
    assert re.search(
        r'gitorch_autoscale_decisions_total\{direction="up",service="burn"\} [1-9]', metrics
    )

    status = gitorch("status", *cluster.state_args, cwd=cluster.root)
    assert "burn: autoscaled to 1 (min 1, max 4)" in status.stdout, status.stdout
    common = ["--repo", str(cluster.repo), *cluster.state_args]
    plan = gitorch("plan", *common, "--runtime", cluster.driver, cwd=cluster.root)
    assert plan.code == 0, plan.stdout + plan.stderr  # nothing to do, no drift
    assert "burn: 1 replicas (the autoscaler's count), min 1, max 4" in plan.stdout, plan.stdout
    print(
        f"scaled out after {scaled_out_after:.1f}s to {peak['desired']} "
        f"(cpu {peak['metrics'][0]['value']}%), back to 1 {scaled_in_after:.1f}s after the load; "
        f"hey: {codes.get(200, 0)} x 200; paced client: {client.ok} ok"
    )


#: The rate hey offers in the rps test (5 workers x 5 requests per second) and the target.
OFFERED_RPS = 25
RPS_TARGET = 10


def test_the_rps_metric_scales_in_proportion_to_the_measured_rate(cluster: Cluster) -> None:
    if shutil.which("hey") is None:
        pytest.fail("hey is not installed (Debian's package hey; .ci/run installs it)")
    port = cluster.port
    service = process_service("api", port=port, replicas=1) + (
        "  autoscale:\n    minReplicas: 1\n    maxReplicas: 5\n"
        f"    metrics: [{{type: rps, targetAverageValue: {RPS_TARGET}}}]\n"
    )
    commit(cluster.repo, {"api.yaml": service}, "an rps-autoscaled api")
    daemon = cluster.daemon(extra=["--autoscale-sync", f"{SYNC:g}s"])
    wait_for(
        "one ready replica and a first decision",
        lambda: (a := autoscale(daemon, "api"))["ready"] == 1 and a["desired"] == 1,
        60,
        describe=daemon.log_tail,
    )
    load = subprocess.run(
        ["hey", "-c", "5", "-q", "5", "-z", "25s", f"http://127.0.0.1:{port}/items"],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    codes = hey_codes(load.stdout)
    assert codes.get(200, 0) > 0 and sum(n for c, n in codes.items() if c != 200) == 0, load.stdout
    with StateStore(cluster.store_location, readonly=True) as store:
        events = store.list_events(kind="autoscale.scaled", newest_first=False, limit=None)
    assert events, f"no scaling during the load\n{daemon.log_tail()}"
    ups = [e.data for e in events if e.data["to"] > e.data["from"]]
    assert ups and all(u["metric"] == "rps" for u in ups), [e.message for e in events]
    for up in ups:
        # Each count is the rate measured over the whole service (per replica x replicas)
        # over the target per replica (a window that began before the load counts less).
        assert up["to"] == math.ceil(up["value"] * up["from"] / RPS_TARGET), up
    last = ups[-1]
    total = last["value"] * last["from"]
    # The last one measured the offered rate, give or take what a loaded machine lets hey
    # send, and the count settled where that rate puts it.
    assert 0.6 * OFFERED_RPS <= total <= 1.2 * OFFERED_RPS, last
    assert max(u["to"] for u in ups) == math.ceil(total / RPS_TARGET), ups
    print(f"rps: {total:.1f} measured -> {last['to']}; events: {[e.message for e in events]}")


def canary_counts(daemon: DaemonProc, name: str) -> dict[str, Any]:
    """The autoscaler's count, the rollout's phase and weight, and how many running
    replicas are on the new version (the canary) and on the old one (the stable set)."""
    svc = daemon.service(name)
    if svc is None or svc["autoscale"] is None:
        return {"desired": None, "phase": None, "weight": None, "canary": 0, "stable": 0}
    replicas = svc["replicas"]
    return {
        "desired": svc["autoscale"]["desired"],
        "phase": svc["rollout"]["phase"],
        "weight": svc["rollout"]["weight"],
        "canary": replicas["updated"],
        "stable": replicas["running"] - replicas["updated"],
        "ready": replicas["ready"],
    }


def replicas_of(daemon: DaemonProc, name: str) -> str:
    """Each replica's name, revision, state and readiness, for failure messages."""
    svc = daemon.service(name) or {"instances": []}
    return "\n".join(
        f"  {i['replica']} {(i['revision'] or '')[:12]} {i['state']} ready={i['ready']}"
        for i in sorted(svc["instances"], key=lambda i: i["replica"])
    )


@pytest.mark.store_incidental  # scaling under load; the etcd path: the rps test
def test_a_canary_paused_mid_rollout_scales_with_its_load(cluster: Cluster) -> None:
    """The autoscaler is not held by a rollout: a canary paused at 50% under a load that
    asks for more replicas grows its stable set and its canary alike (ceil(count x 50%)),
    keeps its weight, serves every request, and a promote ends it at the scaled count."""
    if shutil.which("hey") is None:
        pytest.fail("hey is not installed (Debian's package hey; .ci/run installs it)")
    port = cluster.port

    def api(version: str) -> str:
        return process_service(
            "api", port=port, version=version, replicas=2, strategy=CANARY_PAUSED_AT_HALF
        ) + (
            "  autoscale:\n    minReplicas: 2\n    maxReplicas: 6\n"
            f"    metrics: [{{type: rps, targetAverageValue: {RPS_TARGET}}}]\n"
        )

    commit(cluster.repo, {"api.yaml": api("1")}, "an rps-autoscaled api behind a canary")
    daemon = cluster.daemon(extra=["--autoscale-sync", f"{SYNC:g}s"])
    wait_for(
        "two ready replicas and a first decision",
        lambda: (c := canary_counts(daemon, "api"))["desired"] == 2 and c["ready"] == 2,
        60,
        describe=daemon.log_tail,
    )
    commit(cluster.repo, {"api.yaml": api("2")}, "api v2")
    wait_for(
        "the canary paused at 50% with one canary replica",
        lambda: (
            canary_counts(daemon, "api")
            == {"desired": 2, "phase": "Paused", "weight": 50, "canary": 1, "stable": 2, "ready": 3}
        ),
        60,
        describe=lambda: f"{canary_counts(daemon, 'api')}\n{daemon.log_tail()}",
    )

    client = PacedClient(port, "/items")
    client.start()
    # 5 workers x 8 requests a second: 40 rps over 3 replicas, 13 each against a target
    # of 10: four replicas (and four over six measure 6.7 each: the count holds).
    with hey_running("-c", "5", "-q", "8", "-z", "30s", f"http://127.0.0.1:{port}/items") as load:

        def scaled_canary() -> bool:
            c = canary_counts(daemon, "api")
            count = c["desired"] or 0
            return (
                count > 2
                and c["phase"] == "Paused"
                and c["weight"] == 50
                and c["stable"] == count
                and c["canary"] == math.ceil(count / 2)
                and c["ready"] == c["stable"] + c["canary"]
            )

        wait_for(
            "the paused canary to scale out, stable set and canary alike",
            scaled_canary,
            3 * SYNC + 15 + SLACK,
            describe=lambda: (
                f"{canary_counts(daemon, 'api')}\n{replicas_of(daemon, 'api')}\n"
                f"{scaled(cluster.store_location)}\n{daemon.log_tail()}"
            ),
        )
        peak = canary_counts(daemon, "api")
        codes = hey_all_ok(load)

    promoted = gitorch("promote", "api", *cluster.state_args, cwd=cluster.root)
    assert promoted.code == 0, promoted.stdout + promoted.stderr
    wait_for(
        "the promoted canary to end at the autoscaler's count, all on v2",
        lambda: (
            (c := canary_counts(daemon, "api"))["phase"] == "Healthy"
            and c["stable"] == 0
            and c["canary"] == c["desired"] >= peak["desired"]
            and c["ready"] == c["canary"]
        ),
        60,
        describe=lambda: f"{canary_counts(daemon, 'api')}\n{daemon.log_tail()}",
    )
    client.stop()
    assert client.failures == [] and client.ok > 0, client.failures[:5]
    with StateStore(cluster.store_location, readonly=True) as store:
        events = store.list_events(kind="autoscale.scaled", newest_first=False, limit=None)
    ups = [e.data for e in events if e.data["to"] > e.data["from"]]
    assert ups and ups[0]["from"] == 2 and ups[0]["metric"] == "rps", [e.message for e in events]
    print(f"paused canary scaled to {peak}; hey: {codes.get(200, 0)} x 200; events: {ups}")


HOLD_APP = f"""
import sys

sys.path.insert(0, {str(REPO_ROOT / "examples" / "apps")!r})
from common.server import AppSpec, main


def resident() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")


# Hold 200 MiB in all: what the interpreter and the server take, and the rest in one block
# written to (so it is resident, not merely reserved).
MIB = 1024 * 1024
import common.server  # noqa: F401 - loaded before measuring
held = b"\\x01" * (200 * MIB - resident() - 2 * MIB)
main("holder", lambda settings: AppSpec(settings=settings, routes={{}}))
"""


def holder_service(cluster: Cluster, vertical: str) -> str:
    """A replica that holds 200 MiB, requesting 250m and 512Mi, with ``vertical``."""
    app = cluster.root / "hold.py"
    app.write_text(HOLD_APP, encoding="utf-8")
    return process_service(
        "holder", port=cluster.port, replicas=1, command=["python3", str(app)]
    ) + (
        "  resources: {requests: {cpu: 250m, memory: 512Mi}}\n"
        "  autoscale:\n    minReplicas: 1\n    maxReplicas: 1\n"
        f"    vertical: {vertical}\n"
    )


def test_a_replica_holding_200_mib_gets_a_memory_recommendation_of_200_to_260_mib(
    cluster: Cluster,
) -> None:
    service = holder_service(cluster, "{mode: Recommend, minAllowed: {cpu: 10m}}")
    commit(cluster.repo, {"holder.yaml": service}, "a replica that holds 200 MiB")
    daemon = cluster.daemon(extra=["--autoscale-sync", "1s"])

    def recommended() -> dict[str, Any] | None:
        svc = daemon.service("holder")
        vertical = ((svc or {}).get("autoscale") or {}).get("vertical") or {}
        rec = vertical.get("recommendation") or {}
        return rec if rec.get("memory") is not None else None

    rec = wait_for("a memory recommendation", recommended, 60, describe=daemon.log_tail)
    mib = rec["memory"] / (1024 * 1024)
    assert 200 <= mib <= 260, rec
    assert rec["cpu"] >= 10, rec  # an idle replica: the floor minAllowed sets
    line = f"requests.memory 512Mi -> {int(mib)}Mi"
    status = gitorch("status", *cluster.state_args, cwd=cluster.root)
    assert line in status.stdout, status.stdout
    common = ["--repo", str(cluster.repo), *cluster.state_args, "--runtime", "process"]
    plan = gitorch("plan", *common, cwd=cluster.root)
    assert line in plan.stdout and plan.code == 0, plan.stdout + plan.stderr
    print(f"memory recommendation {mib:.0f}Mi from {rec['samples']} samples")


def test_vertical_mode_auto_applies_the_recommendation_through_a_rolling_update(
    cluster: Cluster,
) -> None:
    """512Mi requested, 200 MiB used: the recommendation (about 237Mi) is more than 20%
    away, so the service rolls to it (a new replica ready before the old one goes, 0 failed
    requests); recorded in the audit log; then plan shows no change and no drift."""
    # cpu held at 10m: only memory moves (a start's cpu spike would move cpu too).
    service = holder_service(
        cluster, "{mode: Auto, minAllowed: {cpu: 10m}, maxAllowed: {cpu: 10m}}"
    )
    commit(cluster.repo, {"holder.yaml": service}, "a replica that holds 200 MiB, Auto")
    daemon = cluster.daemon(extra=["--autoscale-sync", "1s"])
    wait_for("holder up", lambda: (daemon.service("holder") or {}).get("replicas", {}).get("ready") == 1,
             60, describe=daemon.log_tail)  # fmt: skip
    first = {i["id"] for i in daemon.service("holder")["instances"]}  # type: ignore[index]
    client = PacedClient(cluster.port)
    client.start()
    try:

        def rolled() -> bool:
            svc = daemon.service("holder") or {}
            ids = {i["id"] for i in svc.get("instances", []) if i["ready"]}
            return bool(ids) and not ids & first and svc["rollout"]["phase"] == "Healthy"

        wait_for("a rolling update to the recommendation", rolled, 90, describe=daemon.log_tail)
    finally:
        client.stop()
    assert client.failures == [], client.failures[:10]
    with StateStore(cluster.store_location, readonly=True) as store:
        [event] = store.list_events(kind="autoscale.vertical-applied", limit=None)
        applied = {a.name: a for a in store.list_applied() if a.kind == "Service"}["holder"]
    to = event.data["to"]
    assert event.data["from"] == {"cpu": 250, "memory": 512 * 1024 * 1024}, event.data
    assert 200 <= to["memory"] / (1024 * 1024) <= 260 and to["cpu"] == 10, event.data
    assert "holder: requests cpu 250m, memory 512Mi -> cpu 10m, memory" in event.message
    requests = applied.spec["spec"]["resources"]["requests"]
    assert requests["cpu"] == "10m" and requests["memory"] != "512Mi", requests
    common = ["--repo", str(cluster.repo), *cluster.state_args, "--runtime", "process"]
    plan = gitorch("plan", *common, "--format", "json", cwd=cluster.root)
    assert plan.code == 0, plan.stdout + plan.stderr
    doc = plan.json()
    assert doc["changes"] == [] and doc["drift"] == [], doc
    shown = f"applied by mode Auto: requests.memory 512Mi -> {requests['memory']}"
    text = gitorch("plan", *common, cwd=cluster.root)
    assert text.code == 0 and shown in text.stdout, text.stdout + text.stderr
    status = gitorch("status", *cluster.state_args, cwd=cluster.root)
    assert shown in status.stdout, status.stdout
    print(f"vertical Auto: {event.message} ({client.ok} requests, 0 failed)")
