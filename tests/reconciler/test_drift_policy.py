"""``spec.drift`` holds for good (issue 12, defect 8: warn and ignore held for one pass,
then a replica removed outside gitorch was re-created anyway).

For each policy, a replica is removed, one is stopped (SIGKILL from outside), and one
replica of another spec is started with the service's labels, all behind gitorch's back:
``correct`` repairs all three; ``warn`` leaves them and reports (status, an audit event);
``ignore`` leaves them and says nothing. A crash is not drift: covered elsewhere
(test_self_heal), restarted under every policy.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import pytest
from reconciler_helpers import (
    API_APP,
    Cluster,
    commit,
    converged,
    pid_of,
    process_runtime,
    process_service,
    wait_for,
)

from gitorch.runtime.base import (
    LABEL_REPLICA,
    LABEL_REVISION,
    LABEL_SERVICE,
    LABEL_SPEC_DIGEST,
    PortRequest,
    ReplicaSpec,
)
from gitorch.state import StateStore

#: How long a left-alone drift is watched (many resync passes at 0.3 s).
WATCH = 4.0


def _with_drift(yaml: str, policy: str) -> str:
    return yaml.replace(
        "  restartPolicy: Always\n", f"  restartPolicy: Always\n  drift: {policy}\n"
    )


def _running(daemon: Any) -> list[dict[str, Any]]:
    svc = daemon.service("web") or {"instances": []}
    return [i for i in svc["instances"] if i["state"] == "running"]


@pytest.mark.parametrize("policy", ["correct", "warn", "ignore"])
def test_drift_policy_holds(cluster: Cluster, policy: str) -> None:
    sha = commit(
        cluster.repo,
        {"web.yaml": _with_drift(process_service("web", port=cluster.port, replicas=3), policy)},
        f"web, drift {policy}",
    )
    daemon = cluster.daemon(resync=0.3)
    wait_for("web converged", lambda: converged(daemon.service("web"), sha, 3), 60)
    runtime = process_runtime(cluster.state)
    instances = sorted(daemon.service("web")["instances"], key=lambda i: i["replica"])
    removed, stopped = instances[0], instances[1]
    cluster_name = daemon.status()["cluster"]

    runtime.remove(removed["id"])  # removed outside gitorch
    # Stopped outside gitorch: killed by a signal. (A program that exits cleanly on SIGTERM
    # cannot be told from one that ended by itself: that is the restart policy's.)
    os.kill(pid_of(stopped["id"]), signal.SIGKILL)
    foreign = runtime.create(  # a replica of another spec, wearing web's labels
        ReplicaSpec(
            name=f"{cluster_name}-web-9-hand",
            image=None,
            command=(sys.executable, str(API_APP)),
            env={"VERSION": "hand"},
            ports=(PortRequest("http", 8080),),
            labels={
                LABEL_SERVICE: "web",
                LABEL_REPLICA: "web-9",
                LABEL_REVISION: sha,
                LABEL_SPEC_DIGEST: "f" * 64,
            },
        ),
        cluster_name,
    )

    if policy == "correct":
        wait_for(
            "web repaired: 3 of its own spec, the foreign one gone",
            lambda: converged(daemon.service("web"), sha, 3),
            30,
            describe=daemon.log_tail,
        )
        return

    time.sleep(WATCH)
    running = _running(daemon)
    ids = {i["id"] for i in running}
    assert removed["id"] not in ids and stopped["id"] not in ids
    assert foreign.id in ids, "the replica of another spec is left alone"
    assert len(running) == 2, running  # nothing re-created, nothing removed
    svc = daemon.service("web")
    with StateStore(cluster.store_location, readonly=True) as store:
        events = [e for e in store.list_events(service="web") if e.kind == "drift.detected"]
    if policy == "warn":
        assert "drift" in svc["rollout"]["message"], svc["rollout"]
        assert "web-1" in svc["rollout"]["message"] or "missing" in svc["rollout"]["message"]
        assert events, "warn records the drift in the audit log"
    else:
        assert "drift" not in svc["rollout"]["message"].replace("drift: ignore", "")
        assert not events
    runtime.remove(foreign.id)
