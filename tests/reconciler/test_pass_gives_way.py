"""A pass that gives way to a new revision, and the focused pass that acts on the services
a revision changed before the whole pass (issue 20, item 2): in process, against the
process driver and a real store, so what was written and started can be counted.

* a pass preempted after observing, or just before its first write, has written nothing
  and started nothing: the revision is not recorded, no record moved, no replica started;
* the focused pass starts the changed service's new replica while another service's
  lost replica waits for the whole pass; the revision is recorded by the focused pass and
  finished (truthfully) by the whole passes after it.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from reconciler_helpers import (
    Cluster,
    commit,
    converge_session,
    desired_at_head,
    pid_of,
    process_service,
    wait_for,
)

from gitorch.apply.reconciler import PassPreempted
from gitorch.apply.session import Session
from gitorch.decide.cluster import changed_services
from gitorch.manifests.model import DesiredState
from gitorch.state import RevisionResult

pytestmark = pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)


def _replicas(session: Session, desired: DesiredState) -> dict[str, set[str]]:
    live, _ = session.reconciler_for(desired).observe(desired)
    return {name: {r.id for r in s.replicas} for name, s in live.services.items()}


def _two_services(cluster: Cluster, version: str = "1") -> dict[str, str | None]:
    return {
        "api.yaml": process_service("api", port=cluster.port, replicas=2, version=version),
        "web.yaml": process_service("web", port=cluster.second_port, replicas=2),
    }


def test_a_preempted_pass_has_written_and_started_nothing(
    cluster: Cluster, session: Session
) -> None:
    commit(cluster.repo, _two_services(cluster), "v1")
    v1 = desired_at_head(cluster)
    converge_session(session, v1)
    store = session.store
    before = store.last_attempted_revision()
    assert before is not None and before.sha == v1.revision
    records = {r.service: r for r in store.list_rollouts()}
    replicas = _replicas(session, v1)

    commit(cluster.repo, _two_services(cluster, version="2"), "v2")
    v2 = desired_at_head(cluster)
    reconciler = session.reconciler_for(v2)
    asked: list[int] = []

    def after_observing() -> bool:  # gives way at the first question: after observing
        asked.append(1)
        return True

    with pytest.raises(PassPreempted):
        reconciler.reconcile(v2, preempted=after_observing)
    answers = iter([False, True])  # at the second: decided, before the first write
    with pytest.raises(PassPreempted):
        reconciler.reconcile(v2, preempted=lambda: next(answers))

    assert asked == [1]
    last = store.last_attempted_revision()
    assert last is not None and last.sha == v1.revision, "the new revision was recorded"
    assert {r.service: r for r in store.list_rollouts()} == records, "a record moved"
    assert _replicas(session, v2) == replicas, "a replica was started or stopped"

    # The pass after it (not preempted) applies v2 in full.
    converge_session(session, v2)
    done = store.last_attempted_revision()
    assert done is not None and done.sha == v2.revision
    assert done.result is RevisionResult.SUCCEEDED, (done.result, done.reason)


def test_the_focused_pass_starts_the_changed_service_first(
    cluster: Cluster, session: Session
) -> None:
    commit(cluster.repo, _two_services(cluster), "v1")
    v1 = desired_at_head(cluster)
    converge_session(session, v1)

    # web loses a replica (work for the whole pass), then api changes in Git.
    victim = sorted(_replicas(session, v1)["web"])[0]
    os.kill(pid_of(victim), signal.SIGKILL)
    wait_for("the kill seen", lambda: not os.path.exists(f"/proc/{pid_of(victim)}"), 10)
    time.sleep(1.2)  # past the first restart's back-off: the whole pass would refill it
    commit(cluster.repo, _two_services(cluster, version="2"), "v2")
    v2 = desired_at_head(cluster)
    changed = changed_services(v1, v2)
    assert changed == {"api"}

    # The pass in progress (still on v1: it would refill web's slot) gives way to v2.
    reconciler = session.reconciler_for(v1)
    with pytest.raises(PassPreempted):
        reconciler.reconcile(v1, preempted=lambda: True)
    reconciler = session.reconciler_for(v2)
    assert reconciler.focusable(v2, changed)
    focused = reconciler.reconcile_focused(v2, None, changed)
    assert focused is not None
    started = [a for a in focused.executed if a.verb == "start"]
    assert started and {a.service for a in started} == {"api"}, focused.executed
    assert {a.service for a in focused.executed} == {"api"}, "the focus acted beyond api"
    assert [s.name for s in focused.services] == ["api"]
    # The revision is recorded by the focused pass, not finished by it.
    recorded = session.store.last_attempted_revision()
    assert recorded is not None and recorded.sha == v2.revision
    assert recorded.result is RevisionResult.IN_PROGRESS

    # The whole pass then repairs web (its dead replica removed, then its slot refilled),
    # and the revision finishes truthfully.
    whole = reconciler.reconcile(v2)
    assert any(a.service == "web" for a in whole.executed), whole.executed
    converge_session(session, v2)
    done = session.store.last_attempted_revision()
    assert done is not None and done.sha == v2.revision
    assert done.result is RevisionResult.SUCCEEDED, (done.result, done.reason)
    assert set(done.service_results) == {"api"}, done.service_results


def test_a_new_reconciler_applies_a_change_by_the_whole_pass(
    cluster: Cluster, session: Session
) -> None:
    """Found by the chaos soak (seed 1209, etcd state): a leader paused past its lease
    won it back, as a new term with a new reconciler, and a commit's focused pass published
    a table of the changed service's routes alone: the data plane closed every other
    service's listener (new connections refused). A reconciler that has not published a
    table does not know the one in force: the whole pass applies the change."""
    commit(cluster.repo, _two_services(cluster), "v1")
    v1 = desired_at_head(cluster)
    converge_session(session, v1)
    commit(cluster.repo, _two_services(cluster, version="2"), "v2")
    v2 = desired_at_head(cluster)
    changed = changed_services(v1, v2)
    assert changed == {"api"}

    session.reconciler = None  # what a restart, a new term or new nodes do
    fresh = session.reconciler_for(v2)
    assert not fresh.focusable(v2, changed)
    assert fresh.reconcile_focused(v2, None, changed) is None
    with socket.create_connection(("127.0.0.1", cluster.second_port), timeout=5):
        pass  # web's listener is open: nothing published a table without it
    whole = fresh.reconcile(v2)
    assert any(a.service == "api" for a in whole.executed), whole.executed
    assert fresh.focusable(v2, changed)  # its own table is the one in force now
    converge_session(session, v2)
