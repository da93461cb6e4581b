"""A daemon SIGKILLed anywhere in a rolling update converges after a restart.

Each case runs a real ``gitorch daemon`` (subprocess, process driver, ``--resync 0.3
--interval 1``) with 4 replicas of the example api at version 1, commits version 2
(RollingUpdate, maxSurge 1, maxUnavailable 0), waits for one moment of the rollout *as
observed from outside* (the driver's records, the replicas' own health endpoints, the
state store), SIGKILLs the daemon there, and starts a new one on the same state dir.
Then the cluster must converge to exactly the desired replicas: 4, all version 2, one
per slot api-1..api-4, no process of the test left without a record, and a history that
tells what happened (two revisions, both succeeded, each recorded once).

Clients keep requests in flight through the built-in balancer the whole time, and the
old version answers in 300 ms, so a drain (waiting for in-flight requests before the
SIGTERM) lasts long enough for "during a drain" to be a moment one can hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from crash_helpers import (
    REPLICAS,
    Census,
    Cluster,
    Traffic,
    get_page,
    healthz,
    wait_until,
)

from gitorch.state import RevisionResult

SLOTS = [f"api-{n}" for n in range(1, REPLICAS + 1)]
OLD_SLOW_MS = 300
CONVERGE_TIMEOUT = 30.0
MOMENT_TIMEOUT = 15.0


@dataclass(frozen=True)
class Moment:
    """When to kill: ``reached`` is polled (every few ms) from the commit on."""

    name: str
    reached: Callable[[Census, Cluster, str], bool]


def _revision_recorded(_: Census, cluster: Cluster, sha: str) -> bool:
    return any(r.sha == sha for r in cluster.revisions())


def _new_one_ready(census: Census, *_: object) -> bool:
    return any(healthz(r.port) for r in census.new if r.state == "running")


def _old_one_terminating(census: Census, *_: object) -> bool:
    """An old replica got its SIGTERM: still running (finishing a request) but no longer
    answering its health check."""
    return any(not healthz(r.port) for r in census.old if r.state == "running")


# From "nothing happened yet" to "all replaced, revision not yet finished": between the
# steps of the rollout and inside them (a new replica started but not ready, an old one
# draining because the pass that started the next new one also began its drain).
MOMENTS = [
    Moment("at-commit", lambda *_: True),
    Moment("revision-recorded", _revision_recorded),
    Moment("first-new-started", lambda c, *_: len(c.new) >= 1),
    Moment("first-new-ready", _new_one_ready),
    Moment("first-old-draining", lambda c, *_: len(c.new) >= 2),
    Moment("first-old-terminating", _old_one_terminating),
    Moment("first-old-gone", lambda c, *_: len(c.old) <= 3),
    Moment("second-old-draining", lambda c, *_: len(c.new) >= 3),
    Moment("last-new-started", lambda c, *_: len(c.new) >= 4),
    Moment("last-old-left", lambda c, *_: len(c.old) <= 1),
    Moment("all-new-unfinished", lambda c, *_: not c.old),
]


@pytest.fixture
def crash_cluster(tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    try:
        yield made
    finally:
        made.cleanup()


def _census(cluster: Cluster, old_digest: str) -> Census:
    return Census(tuple(cluster.replicas()), old_digest)


def _converged_to(cluster: Cluster, sha: str, not_digest: str | None) -> str | None:
    """The digest all replicas run when the cluster is exactly as desired, else None."""
    replicas = cluster.replicas()
    digests = {r.digest for r in replicas}
    if (
        len(replicas) != REPLICAS
        or len(digests) != 1
        or digests == {not_digest}
        or any(r.state != "running" for r in replicas)
        or sorted(r.slot for r in replicas) != SLOTS
    ):
        return None
    if not any(r.sha == sha and r.result is RevisionResult.SUCCEEDED for r in cluster.revisions()):
        return None
    return digests.pop()


def _wait_converged(cluster: Cluster, sha: str, not_digest: str | None = None) -> str:
    found: list[str] = []

    def done() -> bool:
        digest = _converged_to(cluster, sha, not_digest)
        if digest is not None:
            found.append(digest)
        return digest is not None

    try:
        wait_until(done, CONVERGE_TIMEOUT, f"convergence to {sha[:12]}")
    except AssertionError:
        census = Census(tuple(cluster.replicas()), not_digest or "")
        raise AssertionError(
            f"not converged to {sha[:12]}: {census.describe()}\n"
            f"revisions: {[(r.sha[:12], r.result.value) for r in cluster.revisions()]}\n"
            f"daemon log:\n{cluster.log_tail()}"
        ) from None
    return found[-1]


def _deploy_v1(cluster: Cluster) -> tuple[str, str]:
    v1 = cluster.commit("1", slow_ms=OLD_SLOW_MS)
    cluster.start_daemon()
    return v1, _wait_converged(cluster, v1)


def _assert_exactly_desired(cluster: Cluster, digest: str, context: str) -> None:
    """4 running replicas of ``digest``, one per slot, and no process without a record."""
    replicas = cluster.replicas()
    assert sorted(r.slot for r in replicas) == SLOTS, context
    assert {r.digest for r in replicas} == {digest}, context
    assert all(r.state == "running" for r in replicas), context
    recorded = {r.pid for r in replicas}
    assert cluster.token_pids() == recorded, f"orphans or missing processes ({context})"
    # The records are not stale: each one names a process that is really there.
    assert len(recorded) == REPLICAS, context


@pytest.mark.parametrize("moment", MOMENTS, ids=[m.name for m in MOMENTS])
def test_sigkill_during_rolling_update_converges_after_restart(
    crash_cluster: Cluster, moment: Moment
) -> None:
    cluster = crash_cluster
    v1, old_digest = _deploy_v1(cluster)
    # Through the balancer (drains wait for these), and straight to each old replica (so
    # its SIGTERM finds a request in flight and the graceful stop takes a moment).
    clients = {cluster.lb_port: 3} | {r.port: 1 for r in cluster.replicas() if r.port}
    with Traffic(clients):
        wait_until(lambda: get_page(cluster.lb_port)[0] == 200, 5, "traffic through the balancer")
        v2 = cluster.commit("2")
        _wait_for_moment(cluster, moment, old_digest, v2)
        cluster.kill_daemon()
        at_kill = _census(cluster, old_digest)
        print(f"{moment.name}: killed at {at_kill.describe()}")
        cluster.start_daemon()
        new_digest = _wait_converged(cluster, v2, not_digest=old_digest)
    context = f"killed at {moment.name} ({at_kill.describe()})"
    _assert_exactly_desired(cluster, new_digest, context)

    # Stable: two more passes change nothing (no churn, no late duplicate).
    ids = sorted(r.id for r in cluster.replicas())
    time.sleep(0.7)
    assert sorted(r.id for r in cluster.replicas()) == ids, context
    _assert_exactly_desired(cluster, new_digest, context)

    # Traffic is served by the new version through the restarted daemon's balancer.
    status, body = get_page(cluster.lb_port)
    assert status == 200 and "version=2" in body, (status, body, context)

    # History: each commit applied once, both succeeded; the rollout started once.
    revisions = cluster.revisions()
    assert [(r.sha, r.result) for r in revisions] == [
        (v1, RevisionResult.SUCCEEDED),
        (v2, RevisionResult.SUCCEEDED),
    ], context
    events = cluster.events()
    for kind in ("rollout.started", "revision.succeeded"):
        count = sum(1 for e in events if e.kind == kind and e.revision == v2)
        assert count == 1, f"{count} {kind} events for v2 ({context})"
    unexpected = [
        e
        for e in events
        if e.kind
        in ("rollout.rolled-back", "rollout.failed", "service.degraded", "replica.restarted")
    ]
    assert unexpected == [], context


def test_sigkill_while_scaling_down_counts_no_crash(crash_cluster: Cluster) -> None:
    """Scale 4 -> 3 of the same version, SIGKILL the daemon once api-4 got its SIGTERM:
    the restarted daemon finds api-4 exited. It was being scaled away, not crashing, so
    no restart is counted (no ``replica.restarted``, no back-off) and the cluster settles
    on api-1..api-3."""
    cluster = crash_cluster
    _, digest = _deploy_v1(cluster)
    clients = {cluster.lb_port: 2} | {r.port: 1 for r in cluster.replicas() if r.port}
    with Traffic(clients):
        fewer = cluster.commit("1", slow_ms=OLD_SLOW_MS, replicas=REPLICAS - 1)

        def last_terminating() -> bool:
            return any(
                r.slot == SLOTS[-1] and r.state == "running" and not healthz(r.port)
                for r in cluster.replicas()
            )

        wait_until(last_terminating, MOMENT_TIMEOUT, f"{SLOTS[-1]} terminating")
        cluster.kill_daemon()
        cluster.start_daemon()

        def settled() -> bool:
            replicas = cluster.replicas()
            return (
                sorted(r.slot for r in replicas) == SLOTS[:-1]
                and all(r.state == "running" and r.digest == digest for r in replicas)
                and any(
                    r.sha == fewer and r.result is RevisionResult.SUCCEEDED
                    for r in cluster.revisions()
                )
            )

        wait_until(settled, CONVERGE_TIMEOUT, "3 replicas after the scale-down")
    restarted = [e for e in cluster.events() if e.kind == "replica.restarted"]
    assert restarted == [], [e.message for e in restarted]


def _wait_for_moment(cluster: Cluster, moment: Moment, old_digest: str, sha: str) -> None:
    wait_until(
        lambda: moment.reached(_census(cluster, old_digest), cluster, sha),
        MOMENT_TIMEOUT,
        f"moment {moment.name}",
    )


def test_sigkill_with_replicas_running_readopts_them(crash_cluster: Cluster) -> None:
    cluster = crash_cluster
    v1, digest = _deploy_v1(cluster)
    before = sorted(cluster.replicas(), key=lambda r: r.slot)
    events_before = len(cluster.events())

    cluster.kill_daemon()
    # The replicas do not depend on the daemon: all still there, untouched.
    assert sorted(cluster.replicas(), key=lambda r: r.slot) == before
    assert cluster.token_pids() == {r.pid for r in before}

    cluster.start_daemon()
    # Answering through the balancer means the new daemon observed the replicas, probed
    # them and published its routing table.
    wait_until(lambda: get_page(cluster.lb_port)[0] == 200, 10, "the balancer after a restart")
    time.sleep(1.0)  # a few more passes (resync 0.3 s): time for any wrong decision

    assert sorted(cluster.replicas(), key=lambda r: r.slot) == before  # same ids, same ports
    _assert_exactly_desired(cluster, digest, "re-adopted")
    assert [(r.sha, r.result) for r in cluster.revisions()] == [(v1, RevisionResult.SUCCEEDED)]
    new_events = cluster.events()[events_before:]
    assert new_events == [], [e.kind for e in new_events]
