"""``gitorch plan`` against a live cluster lists exactly the actions the next pass executes
(issue 12, "What must hold"): the plan is computed by the CLI in its own process, then one
pass runs in this one, and the replica actions are compared one for one.

Two situations: a killed replica plus a rolling update pending (starts of the new
version and of the lost slot), and a scale-down (drains).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from reconciler_helpers import (
    Cluster,
    commit,
    converge_session,
    desired_at_head,
    gitorch,
    pid_of,
    process_service,
    wait_for,
)

from gitorch.apply.session import Session

REPLICA_ACTIONS = ("start", "drain", "remove")


def _planned(cluster: Cluster) -> list[dict[str, Any]]:
    done = gitorch(
        "plan",
        "--repo",
        str(cluster.repo),
        *cluster.state_args,
        "--runtime",
        "process",
        "--format",
        "json",
        cwd=cluster.root,
    )
    assert done.code in (0, 2), done.stderr
    return [a for a in done.json()["actions"] if a["action"] in REPLICA_ACTIONS]


def _key(action: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(action.get(k)) for k in ("action", "service", "replica", "node", "version"))


def test_plan_lists_exactly_what_the_next_pass_executes(cluster: Cluster, session: Session) -> None:
    commit(cluster.repo, {"api.yaml": process_service("api", port=cluster.port, replicas=3)}, "v1")
    desired = desired_at_head(cluster)
    converge_session(session, desired)

    # A replica dies, and a new version is committed.
    live, _ = session.reconciler_for(desired).observe(desired)
    first = sorted(live.services["api"].replicas, key=lambda r: r.replica)[0]
    os.kill(pid_of(first.id), signal.SIGKILL)
    wait_for("the kill seen", lambda: not os.path.exists(f"/proc/{pid_of(first.id)}"), 10)
    time.sleep(1.2)  # past the first restart's back-off, so the slot is refilled now
    commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=cluster.port, replicas=3, version="2")},
        "v2",
    )
    desired = desired_at_head(cluster)

    planned = _planned(cluster)
    result = session.reconciler_for(desired).reconcile(desired)
    executed = [a.to_json() for a in result.executed if a.verb in REPLICA_ACTIONS]
    assert planned, "the plan lists the pass's actions"
    assert sorted(map(_key, planned)) == sorted(map(_key, executed)), (planned, executed)

    # Scale down once converged: the drains are planned and executed alike.
    converge_session(session, desired)
    commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=cluster.port, replicas=1, version="2")},
        "scale to 1",
    )
    desired = desired_at_head(cluster)
    planned = _planned(cluster)
    result = session.reconciler_for(desired).reconcile(desired)
    executed = [a.to_json() for a in result.executed if a.verb in REPLICA_ACTIONS]
    assert [a["action"] for a in planned].count("drain") == 2, planned
    assert sorted(map(_key, planned)) == sorted(map(_key, executed)), (planned, executed)
