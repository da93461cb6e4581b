"""A revision whose application failed, and that later converges, is recorded as
recovered: history keeps the failed application and adds a succeeded one of the same
commit (``trigger: recovered``); status then shows the revision the cluster runs and no
stale error (as Flux's ``lastAppliedRevision`` moves once a retry succeeds).

Found by hand: a port held by a foreign process at the daemon's start failed the
revision; once freed, every service was Healthy on it, yet status said ``revision -``
and the port's error for good.

A real daemon on the process driver, a real Git repo, a real foreign socket.
"""

from __future__ import annotations

from typing import Any

from reconciler_helpers import (
    Cluster,
    commit,
    converged,
    gitorch,
    hold_port,
    process_service,
    wait_for,
)


def _history(daemon: Any) -> list[dict[str, Any]]:
    code, entries = daemon.request("GET", "/api/v1/history")
    assert code == 200, entries
    assert isinstance(entries, list)
    return entries


def test_a_failed_revision_that_converges_later_is_recorded_as_recovered(
    cluster: Cluster,
) -> None:
    holder = hold_port()
    held_port = holder.getsockname()[1]
    try:
        sha = commit(
            cluster.repo,
            {
                "api.yaml": process_service("api", port=cluster.port, replicas=2),
                "cache.yaml": process_service("cache", port=held_port, replicas=1),
            },
            "api, and cache on a port someone holds",
        )
        daemon = cluster.daemon()
        wait_for(
            "the revision recorded as failed, naming the port",
            lambda: any(
                e["revision"] == sha and e["result"] == "failed" and str(held_port) in e["reason"]
                for e in _history(daemon)
            ),
            60,
            describe=daemon.log_tail,
        )
        assert daemon.status()["revision"] is None
        assert str(held_port) in (daemon.status()["lastError"] or "")
    finally:
        holder.close()

    wait_for(
        "cache converged once its port is free",
        lambda: converged(daemon.service("cache"), sha, 1),
        90,
        describe=daemon.log_tail,
    )
    wait_for(
        "a recovered application of the same commit",
        lambda: _history(daemon)[0]["trigger"] == "recovered",
        30,
        describe=daemon.log_tail,
    )
    recovered, failed = _history(daemon)[:2]
    assert (recovered["revision"], recovered["result"]) == (sha, "succeeded"), recovered
    assert recovered["reason"] == "converged after the failed application: cache Healthy"
    assert recovered["author"] == failed["author"] and failed["result"] == "failed"
    status = daemon.status()
    assert status["revision"] == sha and status["lastError"] is None, status
    # Recorded once: the passes after it change nothing.
    assert [e["trigger"] for e in _history(daemon)].count("recovered") == 1
    text = gitorch("history", *cluster.state_args, cwd=cluster.root).stdout
    assert "recovered" in text, text


def test_a_service_that_stays_rolled_back_does_not_keep_a_recovered_revision_failed(
    cluster: Cluster,
) -> None:
    """api rolled back from an earlier commit (its bad template is still in Git, so not
    retried) counted neither for nor against a later revision's application; its
    recovery waited for api to be Healthy, which it never is: status kept the port's
    error after cache served (found by a walkthrough, with `gitorch abort`)."""
    first = commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=cluster.port, replicas=1, deadline=4)},
        "api v1",
    )
    daemon = cluster.daemon()
    wait_for(
        "api v1", lambda: converged(daemon.service("api"), first, 1), 60, describe=daemon.log_tail
    )
    bad = commit(
        cluster.repo,
        {
            "api.yaml": process_service(
                "api",
                port=cluster.port,
                replicas=1,
                version="2",
                deadline=4,
                env={"FAIL_MODE": "unhealthy"},
            )
        },
        "api v2, never ready",
    )
    wait_for(
        "api v2 rolled back",
        lambda: (daemon.service("api") or {}).get("rollout", {}).get("phase") == "RolledBack",
        40,
        describe=daemon.log_tail,
    )
    holder = hold_port(cluster.second_port)
    try:
        sha = commit(
            cluster.repo,
            {"cache.yaml": process_service("cache", port=cluster.second_port, replicas=1)},
            "cache on a port someone holds",
        )
        wait_for(
            "the revision recorded as failed",
            lambda: any(e["revision"] == sha and e["result"] == "failed" for e in _history(daemon)),
            60,
            describe=daemon.log_tail,
        )
    finally:
        holder.close()
    wait_for(
        "a recovered application of the same commit",
        lambda: _history(daemon)[0]["trigger"] == "recovered",
        60,
        describe=daemon.log_tail,
    )
    recovered = _history(daemon)[0]
    assert (recovered["revision"], recovered["result"]) == (sha, "succeeded"), recovered
    assert recovered["reason"].startswith(
        f"converged after the failed application: cache Healthy; api stays rolled back from "
        f"{bad[:12]} ("
    ), recovered["reason"]
    # Each service's own outcome: api neither failed nor succeeded here; it stays rolled back.
    failed = next(e for e in _history(daemon) if e["revision"] == sha and e["result"] == "failed")
    assert failed["services"] == {"api": "rolled-back", "cache": "failed"}, failed
    assert recovered["services"] == {"api": "rolled-back", "cache": "succeeded"}, recovered
    status = daemon.status()
    assert status["revision"] == sha and status["lastError"] is None, status
    (api,) = [s for s in status["services"] if s["name"] == "api"]
    assert api["revision"] == first and api["rollout"]["phase"] == "RolledBack"
