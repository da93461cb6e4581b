"""Self-healing (issue 5, "What must hold"): a replica killed or removed behind gitorch's
back is replaced within two resync passes while the endpoint keeps serving, and a replica
that crashes at once backs off exponentially (decide/backoff.py: 1 s, 2 s, 4 s, ...)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from reconciler_helpers import (
    Cluster,
    LoadClient,
    commit,
    converged,
    docker_service,
    gitorch,
    instance_ids,
    pid_of,
    process_service,
    wait_for,
)

from gitorch.state import StateStore

RESYNC = 0.5
#: A replacement must exist (created) within two resync passes of the loss, plus the
#: duration of one pass on a busy 2-core machine (observe + create: well under 1 s) and
#: the first restart's crash-loop back-off (1 s: a killed replica counts as an exit).
CREATED_BOUND = 2 * RESYNC + 1.0 + 1.0
#: ... and be ready one readiness period (1 s) plus the app's start (< 1 s) later.
READY_BOUND = CREATED_BOUND + 1.0 + 1.5

CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


def _crasher_yaml() -> str:
    return f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: crasher
spec:
  command: {CRASHER!r}
  replicas: 1
  restartPolicy: Always
  terminationGracePeriodSeconds: 1
""".replace("'", '"')


def _repair(cluster: Cluster, daemon: Any, lose: Any) -> tuple[float, float]:
    """Lose one replica with ``lose(instance)``; return (created after, ready after) in s."""
    before = daemon.service("api")
    victim = before["instances"][0]
    others = instance_ids(before) - {victim["id"]}
    lose(victim)
    lost_at = time.monotonic()  # the replica is gone now
    created = ready = None
    deadline = lost_at + 20
    while time.monotonic() < deadline and ready is None:
        svc = daemon.service("api")
        new = [i for i in svc["instances"] if i["id"] not in others and i["id"] != victim["id"]]
        if new and created is None:
            created = time.monotonic() - lost_at
        if new and new[0]["ready"] and len(svc["instances"]) == 3:
            ready = time.monotonic() - lost_at
        time.sleep(0.05)
    assert created is not None and ready is not None, (daemon.status(), daemon.log_tail())
    assert victim["id"] not in instance_ids(daemon.service("api"))
    return created, ready


def test_killed_process_replica_is_replaced_while_serving(cluster: Cluster) -> None:
    port = cluster.port
    sha = commit(cluster.repo, {"api.yaml": process_service("api", port=port)}, "api")
    daemon = cluster.daemon(resync=RESYNC)
    wait_for(
        "converged", lambda: converged(daemon.service("api"), sha, 3), 40, describe=daemon.log_tail
    )

    def kill9(instance: dict[str, Any]) -> None:
        os.kill(pid_of(instance["id"]), signal.SIGKILL)

    with LoadClient(port) as load:
        wait_for("load flowing", lambda: load.total > 50, 10)
        created, ready = _repair(cluster, daemon, kill9)
        mark = load.total
        wait_for("load after the repair", lambda: load.total > mark + 50, 10)
    print(
        f"process replica kill -9: replacement created after {created:.2f}s, ready after {ready:.2f}s"
    )
    assert created <= CREATED_BOUND, created
    assert ready <= READY_BOUND, ready
    # The balancer retries a GET refused by the dead backend on another one.
    assert load.failures == [], (
        len(load.failures),
        load.failures[:10],
        load.total,
        daemon.log_tail(),
    )
    assert converged(daemon.service("api"), sha, 3)


@pytest.mark.docker
def test_removed_container_is_replaced_while_serving(docker_cluster: Cluster) -> None:
    cluster = docker_cluster
    port = cluster.port
    yaml = docker_service("api", port=port, image="gitorch-example/api:1")
    sha = commit(cluster.repo, {"api.yaml": yaml}, "api")
    daemon = cluster.daemon(resync=RESYNC)
    wait_for(
        "converged", lambda: converged(daemon.service("api"), sha, 3), 40, describe=daemon.log_tail
    )

    def docker_rm(instance: dict[str, Any]) -> None:
        subprocess.run(["docker", "rm", "-f", instance["id"]], check=True, capture_output=True)

    with LoadClient(port) as load:
        wait_for("load flowing", lambda: load.total > 50, 10)
        created, ready = _repair(cluster, daemon, docker_rm)
        mark = load.total
        wait_for("load after the repair", lambda: load.total > mark + 50, 10)
    print(f"docker rm -f: replacement created after {created:.2f}s, ready after {ready:.2f}s")
    # The reconciler may see the container exiting while `docker rm -f` runs: that counts
    # as an exit (back-off 1 s), as for the killed process, hence the same bound.
    assert created <= CREATED_BOUND, created
    assert ready <= READY_BOUND, ready
    assert load.failures == [], (len(load.failures), load.failures[:10], load.total)


def _restarts(state: Path | str, service: str) -> list[tuple[float, float]]:
    """Each recorded restart of ``service``: when its replica exited (the back-off counts
    from there), and the back-off it decided (s)."""
    with StateStore(state, readonly=True) as store:
        events = store.list_events(
            service=service, kind="replica.restarted", limit=None, newest_first=False
        )
    return [(float(e.data["exitedAt"]), float(e.data["backoffSeconds"])) for e in events]


def _restart_times(state: Path | str, service: str) -> list[float]:
    return [at for at, _ in _restarts(state, service)]


def _typical_pass(daemon: Any) -> float:
    """Twice the daemon's mean reconcile pass so far, from its own histogram (a pass
    that creates or removes a replica takes longer than one that only observes)."""
    code, text = daemon.request("GET", "/metrics")
    assert code == 200, text
    found = {
        name: float(value)
        for name, value in re.findall(
            r"^gitorch_reconcile_duration_seconds_(sum|count)(?:\{.*?\})? (\S+)$",
            text,
            re.MULTILINE,
        )
    }
    assert found.get("count"), text[:2000]
    return 2 * found["sum"] / found["count"]


def _crasher_lifetime() -> float:
    """How long this host takes now to start the crasher and see it exit (the slowest of
    three runs): the machine's share of each gap, measured in the same run."""
    took = []
    for _ in range(3):
        started = time.monotonic()
        subprocess.run(CRASHER, check=False)
        took.append(time.monotonic() - started)
    return max(took)


def test_crash_loop_backs_off_exponentially(cluster: Cluster) -> None:
    commit(cluster.repo, {"crasher.yaml": _crasher_yaml()}, "a replica that exits at once")
    daemon = cluster.daemon(resync=RESYNC)

    def four_restarts() -> list[float] | None:
        found = _restart_times(cluster.store_location, "crasher")
        return found if len(found) >= 4 else None

    wait_for(
        "4 restarts of the crashing replica",
        four_restarts,
        25,
        interval=0.2,
        describe=daemon.log_tail,
    )
    restarts = _restarts(cluster.store_location, "crasher")[:4]
    # The promise: the back-off doubles (1, 2, 4 s) and no restart comes before it.
    assert [wait for _, wait in restarts[:3]] == [1.0, 2.0, 4.0], restarts
    times = [at for at, _ in restarts]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Exit n is followed by its slot's recreation on the first pass after delay(n) from
    # that exit (within a resync period and a pass), then the crasher starts and exits
    # again. How long a pass and the crasher take is the machine's part: measured in this
    # run (a loaded CI host with etcd took 2 s more than the idle figure a fixed bound
    # assumed).
    slack = 2 * (RESYNC + _typical_pass(daemon)) + _crasher_lifetime()
    for n, gap in enumerate(gaps, start=1):
        expected = 2.0 ** (n - 1)
        assert expected - 0.1 <= gap <= expected + slack, (n, gaps, slack)
    print(
        "crash-loop restart gaps:",
        ", ".join(f"{g:.2f}s" for g in gaps),
        f"(slack for this host now: {slack:.2f}s)",
    )


def test_status_shows_restarts_of_a_crash_looping_replica(cluster: Cluster) -> None:
    commit(cluster.repo, {"crasher.yaml": _crasher_yaml()}, "a replica that exits at once")
    daemon = cluster.daemon(resync=RESYNC)
    wait_for(
        "2 restarts of the crashing replica",
        lambda: len(_restart_times(cluster.store_location, "crasher")) >= 2,
        15,
        interval=0.2,
        describe=daemon.log_tail,
    )
    svc = daemon.service("crasher")
    assert svc is not None
    status = gitorch("status", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert status.code == 0, status.stderr
    cli_svc = next(s for s in status.json()["services"] if s["name"] == "crasher")
    # Either on the replica (instances[].restarts) or for the service as a whole.
    for where, data in (("GET /api/v1/status", svc), ("gitorch status", cli_svc)):
        shown = max(
            [i["restarts"] for i in data["instances"]]
            + [data.get("restarts") or 0, data["rollout"].get("restarts") or 0]
        )
        assert shown >= 2, f"{where} shows no restarts of a crash-looping replica: {data}"
