"""A bad version rolls back without dropping a request, is not retried, and a later good
commit rolls out normally (issue 5, "What must hold": bad version)."""

from __future__ import annotations

import time

from reconciler_helpers import (
    Cluster,
    LoadClient,
    commit,
    converged,
    get_version,
    gitorch,
    instance_ids,
    process_service,
    wait_for,
)

DEADLINE = 8  # progressDeadlineSeconds of every version here
#: Rolled back at most this long after the commit: the deadline, plus one poll interval
#: (2 s) to see the commit, plus a few passes and a drain (generous for 2 busy cores).
ROLLBACK_BOUND = DEADLINE + 12


def test_bad_version_rolls_back_without_failed_requests_and_is_not_retried(
    cluster: Cluster,
) -> None:
    port = cluster.port
    good = process_service("api", port=port, version="1", replicas=2, deadline=DEADLINE)
    sha1 = commit(cluster.repo, {"api.yaml": good}, "api v1")
    daemon = cluster.daemon()
    wait_for(
        "v1 converged",
        lambda: converged(daemon.service("api"), sha1, 2),
        40,
        describe=daemon.log_tail,
    )
    v1_ids = instance_ids(daemon.service("api"))

    bad = process_service(
        "api", port=port, version="2", replicas=2, deadline=DEADLINE, env={"FAIL_MODE": "unhealthy"}
    )
    with LoadClient(port) as load:
        wait_for("load flowing", lambda: load.total > 50, 10)
        committed = time.monotonic()
        sha2 = commit(cluster.repo, {"api.yaml": bad}, "api v2: never ready")

        def rolled_back() -> bool:
            svc = daemon.service("api")
            return bool(svc and svc["rollout"]["phase"] == "RolledBack")

        wait_for("the rollback", rolled_back, ROLLBACK_BOUND, describe=daemon.log_tail)
        took = time.monotonic() - committed
        # The deadline is honoured: not rolled back before it ran out.
        assert took >= DEADLINE - 0.5, took

        # The new replicas are removed, the v1 replicas (never stopped: maxUnavailable 0) serve.
        wait_for(
            "only v1 replicas left",
            lambda: instance_ids(daemon.service("api")) == v1_ids,
            10,
            describe=lambda: str(daemon.service("api")),
        )
        # No retry loop: for several poll intervals and many resync passes, no replica of
        # the failed revision appears again.
        watch_until = time.monotonic() + 6
        while time.monotonic() < watch_until:
            svc = daemon.service("api")
            assert svc is not None
            assert instance_ids(svc) == v1_ids, svc["instances"]
            assert svc["rollout"]["phase"] == "RolledBack", svc["rollout"]
            time.sleep(0.3)
    assert load.failures == [], (len(load.failures), load.failures[:10], load.total)
    assert set(load.versions) == {"1"}, load.versions

    status = gitorch("status", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert status.code == 0, status.stderr
    svc = next(s for s in status.json()["services"] if s["name"] == "api")
    assert svc["rollout"]["phase"] == "RolledBack"
    assert "progress deadline" in (svc["rollout"]["lastError"] or ""), svc["rollout"]
    assert {i["revision"] for i in svc["instances"]} == {sha1}

    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert history.code == 0, history.stderr
    by_sha = {h["revision"]: h for h in history.json()}
    assert by_sha[sha2]["result"] == "rolled-back", by_sha[sha2]
    assert "progress deadline" in by_sha[sha2]["reason"], by_sha[sha2]
    assert by_sha[sha2]["services"] == {"api": "rolled-back"}
    assert by_sha[sha1]["result"] == "succeeded"

    # Not retried after a daemon restart either: the failed template is in the store.
    daemon.stop()
    daemon = cluster.daemon()
    wait_for("the restarted daemon's first pass", lambda: daemon.service("api"), 15)
    watch_until = time.monotonic() + 4
    while time.monotonic() < watch_until:
        svc = daemon.service("api")
        assert svc is not None
        assert instance_ids(svc) == v1_ids, svc["instances"]
        assert svc["rollout"]["phase"] == "RolledBack", svc["rollout"]
        time.sleep(0.3)

    # A later good commit rolls out normally.
    sha3 = commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=port, version="3", replicas=2, deadline=DEADLINE)},
        "api v3",
    )
    wait_for(
        "v3 converged",
        lambda: converged(daemon.service("api"), sha3, 2),
        40,
        describe=daemon.log_tail,
    )
    wait_for("the endpoint serving v3", lambda: get_version(port) == "3", 10)
    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    newest = history.json()[0]
    assert newest["revision"] == sha3 and newest["result"] == "succeeded", newest
