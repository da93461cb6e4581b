"""What issue 20 changed in the daemon's behaviour (its speed is measured in bench/): a
replica without probes that dies wakes the daemon (process driver: its reaper; Docker: the
engine's events stream) instead of waiting for the resync, and status serves the last quiet pass's observation, saying how old it is,
also to a local `gitorch status` (through the daemon's API)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from reconciler_helpers import (
    Cluster,
    DaemonProc,
    cli_env,
    commit,
    converged,
    gitorch,
    instance_ids,
    pid_of,
    process_service,
    wait_for,
)

#: Far longer than the repair may take: only the exit's wake can explain a replacement.
LONG_RESYNC = 120.0

#: `gitorch status --format json ARGS` in this interpreter; prints what it loaded.
LOADED_BY_STATUS = """
import io, json, sys
from contextlib import redirect_stdout
from gitorch.cli import main
out = io.StringIO()
with redirect_stdout(out):
    main(["status", "--format", "json", *sys.argv[1:]])
doc = json.loads(out.getvalue())
print("\\nPROBE " + json.dumps({"observedAt": doc.get("observedAt"), "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("adopted", [False, True], ids=["started", "adopted"])
def test_a_probeless_replica_that_dies_is_replaced_before_the_resync(
    cluster: Cluster, adopted: bool
) -> None:
    """``adopted``: the replicas were started by a daemon killed since; the one now
    running did not start them (they are not its children) and still hears their exit."""
    sha = commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=cluster.port, replicas=2, readiness=False)},
        "api",
    )
    daemon = cluster.daemon(resync=LONG_RESYNC)
    wait_for(
        "converged", lambda: converged(daemon.service("api"), sha, 2), 60, describe=daemon.log_tail
    )
    if adopted:
        started = instance_ids(daemon.service("api"))
        daemon.proc.kill()
        daemon.proc.wait(10)
        daemon = cluster.daemon(resync=LONG_RESYNC)
        wait_for(
            "converged again",
            lambda: converged(daemon.service("api"), sha, 2),
            60,
            describe=daemon.log_tail,
        )
        assert instance_ids(daemon.service("api")) == started  # adopted, not replaced
    took = _seconds_to_replace(daemon, lambda victim: os.kill(pid_of(victim), signal.SIGKILL))
    # A pass at once, plus the first restart's crash-loop back-off (1 s): seconds, where
    # the resync would have taken up to LONG_RESYNC.
    assert took < 15, took


def _seconds_to_replace(daemon: DaemonProc, kill: Callable[[str], object]) -> float:
    """Kill one of api's replicas (once the start's passes are over: the next one would be
    the resync's) and time until a new one is there."""
    time.sleep(1.0)
    before = instance_ids(daemon.service("api"))
    kill(sorted(before)[0])
    killed = time.monotonic()
    wait_for(
        "a replacement",
        lambda: len(instance_ids(daemon.service("api")) - before) == 1,
        30,
        describe=daemon.log_tail,
    )
    return time.monotonic() - killed


def _probeless_container_service(name: str, replicas: int) -> str:
    return f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: {name}
spec:
  image: gitorch-example/api:1
  replicas: {replicas}
  ports:
    - {{name: http, containerPort: 8080}}
  restartPolicy: Always
  terminationGracePeriodSeconds: 2
"""


def test_a_probeless_container_that_dies_is_replaced_before_the_resync(
    docker_cluster: Cluster,
) -> None:
    cluster = docker_cluster
    sha = commit(cluster.repo, {"api.yaml": _probeless_container_service("api", 2)}, "api")
    daemon = cluster.daemon(resync=LONG_RESYNC)
    wait_for(
        "converged", lambda: converged(daemon.service("api"), sha, 2), 90, describe=daemon.log_tail
    )
    took = _seconds_to_replace(
        daemon,
        lambda victim: subprocess.run(["docker", "kill", victim], check=True, capture_output=True),
    )
    # The engine's die event wakes a pass at once, plus the first restart's back-off (1 s):
    # seconds, where the resync would have taken up to LONG_RESYNC.
    assert took < 15, took


@pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)
def test_status_serves_the_last_observation_and_says_its_age(cluster: Cluster) -> None:
    sha = commit(
        cluster.repo, {"api.yaml": process_service("api", port=cluster.port, replicas=2)}, "api"
    )
    daemon = cluster.daemon(resync=LONG_RESYNC)
    wait_for(
        "converged", lambda: converged(daemon.service("api"), sha, 2), 60, describe=daemon.log_tail
    )
    doc = daemon.status()
    assert isinstance(doc["observedAt"], float), doc.get("observedAt")
    assert 0 <= doc["observedAgeSeconds"] <= 30, doc["observedAgeSeconds"]
    # A local status asks the daemon (its document: "tracking" and "observedAt") ...
    local = gitorch("status", "--state", str(cluster.state), "--format", "json", cwd=cluster.root)
    assert local.code == 0, local.stderr
    data = local.json()
    assert "observedAt" in data and data["tracking"]["revision"] == sha, sorted(data)
    assert {s["name"] for s in data["services"]} == {"api"}
    # ... loading none of the store's, the live side's or rich's modules on the way.
    probe = subprocess.run(
        [sys.executable, "-c", LOADED_BY_STATUS, "--state", str(cluster.state)],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=cluster.root,
        timeout=60,
    )
    loaded = json.loads(probe.stdout.rpartition("\nPROBE ")[2])
    assert loaded["observedAt"], "the probe's status did not come from the daemon"
    heavy = ("gitorch.state", "gitorch.live", "gitorch.readmodel.status", "rich", "docker")
    assert [m for m in loaded["modules"] if m.startswith(heavy)] == [], loaded["modules"]
    # ... and one service of it is that service, an unknown one an error, as before.
    one = gitorch(
        "status", "api", "--state", str(cluster.state), "--format", "json", cwd=cluster.root
    )
    assert one.code == 0 and [s["name"] for s in one.json()["services"]] == ["api"]
    nope = gitorch("status", "nope", "--state", str(cluster.state), cwd=cluster.root)
    assert nope.code != 0 and "no service named 'nope'" in nope.stderr, nope.stderr
    # A replica that dies is not shown running from an old observation: its exit wakes
    # a pass, which acts (a replacement), and status observes again after it.
    victim = sorted(instance_ids(daemon.service("api")))[0]
    os.kill(pid_of(victim), signal.SIGKILL)
    wait_for(
        "status without the dead replica running",
        lambda: all(
            i["state"] != "running"
            for i in (daemon.service("api") or {}).get("instances", [])
            if i["id"] == victim
        ),
        15,
        describe=daemon.log_tail,
    )
