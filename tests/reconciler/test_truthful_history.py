"""History and status say what happened, to whom, because of which commit (issue 12,
defects 4 to 7): a crash-looping service recorded ``succeeded``; liveness kills of new
replicas counted as restarts of the old ones; a good commit blamed for the previous one's
rollback; a revert to the running spec with no history entry and a stale RolledBack.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from reconciler_helpers import (
    Cluster,
    commit,
    converged,
    git,
    gitorch,
    process_service,
    wait_for,
)


def _history(cluster: Cluster) -> list[dict[str, Any]]:
    done = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert done.code == 0, done.stderr
    return list(done.json())


def _result_of(cluster: Cluster, sha: str) -> str | None:
    for entry in _history(cluster):
        if entry["revision"] == sha:
            return str(entry["result"])
    return None


def _with_liveness(yaml: str) -> str:
    """Add a liveness probe on /healthz (fails with FAIL_MODE=unhealthy) to a Service."""
    probe = (
        "  livenessProbe:\n"
        "    httpGet: {path: /healthz, port: http}\n"
        "    periodSeconds: 1\n"
        "    timeoutSeconds: 1\n"
        "    failureThreshold: 2\n"
    )
    return yaml.replace("  strategy:\n", probe + "  strategy:\n", 1)


def test_history_blames_the_right_commit_and_a_revert_clears_the_rollback(
    cluster: Cluster,
) -> None:
    api = lambda **kw: _with_liveness(  # noqa: E731
        process_service("api", port=cluster.port, replicas=2, deadline=6, **kw)
    )
    cache_port = cluster.second_port
    v1 = commit(
        cluster.repo,
        {"api.yaml": api(), "cache.yaml": process_service("cache", port=cache_port, replicas=1)},
        "v1",
    )
    daemon = cluster.daemon()
    wait_for("api converged", lambda: converged(daemon.service("api"), v1, 2), 60)
    wait_for("cache converged", lambda: converged(daemon.service("cache"), v1, 1), 60)
    old = {i["id"] for i in daemon.service("api")["instances"]}

    # A: a version whose liveness (and readiness) fails: killed by liveness, rolled back.
    bad = commit(cluster.repo, {"api.yaml": api(version="2", env={"FAIL_MODE": "unhealthy"})}, "A")
    wait_for(
        "A rolled back",
        lambda: _result_of(cluster, bad) == "rolled-back",
        60,
        describe=daemon.log_tail,
    )
    svc = daemon.service("api")
    for instance in svc["instances"]:
        if instance["id"] in old:
            assert instance["restarts"] == 0, instance  # the new version's deaths are not theirs
    log = daemon.log_path.read_text(encoding="utf-8", errors="replace")
    assert "liveness" in log, "a liveness kill must be logged with its cause"

    # B: changes only cache, and rolls out fine: B succeeded; A keeps its own result.
    good = commit(
        cluster.repo,
        {"cache.yaml": process_service("cache", port=cache_port, version="2", replicas=1)},
        "B",
    )
    wait_for("B finished", lambda: _result_of(cluster, good) not in (None, "in-progress"), 60)
    assert _result_of(cluster, good) == "succeeded", _history(cluster)[:3]
    assert _result_of(cluster, bad) == "rolled-back"

    # A revert of A brings api back to the spec that runs: a history entry (no-changes),
    # the applied revision moves, and the rollback is over.
    git(cluster.repo, "revert", "--no-edit", bad)
    reverted = git(cluster.repo, "rev-parse", "HEAD")
    wait_for(
        "the revert recorded",
        lambda: _result_of(cluster, reverted) == "no-changes",
        30,
        describe=daemon.log_tail,
    )
    wait_for(
        "api Healthy again with no error",
        lambda: (
            (daemon.service("api") or {}).get("rollout", {}).get("phase") == "Healthy"
            and not daemon.service("api")["rollout"]["lastError"]
        ),
        20,
    )
    assert daemon.status()["revision"] == reverted


def test_a_crash_looping_service_never_succeeds(cluster: Cluster) -> None:
    crasher = json.dumps([sys.executable, "-c", "import sys; sys.exit(0)"])
    sha = commit(
        cluster.repo,
        {
            "crasher.yaml": f"""apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: crasher
spec:
  command: {crasher}
  replicas: 1
  restartPolicy: Always
  strategy:
    progressDeadlineSeconds: 6
"""
        },
        "a command that exits at once",
    )
    daemon = cluster.daemon(resync=0.2)
    wait_for(
        "its revision finished",
        lambda: _result_of(cluster, sha) not in (None, "in-progress"),
        40,
        describe=daemon.log_tail,
    )
    assert _result_of(cluster, sha) == "failed", _history(cluster)[:2]
    svc = daemon.service("crasher")
    assert svc["rollout"]["phase"] == "Degraded", svc["rollout"]
    assert svc["restarts"] >= 2, svc
    text = gitorch("status", *cluster.state_args, cwd=cluster.root)
    assert "crasher-1" in text.stdout and "restart" in text.stdout, text.stdout
