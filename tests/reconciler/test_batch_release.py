"""A pass holds back the replicas of a batch that answered until their partners answered
too, or READY_SETTLE after the first (gitorch.decide.batch; issue 20, item 3).

CI caught the daemon's wait before a pass missing a readiness that came during a pass's
observation (on etcd, whose reads make that window wider): the pass saw the first of a
pair ready alone and replaced one old replica, and the partner made a wave of one. The
hold is now applied where the pass reads the health, whatever woke it. Here single
passes are driven in the test's process, against the process driver, with readiness the
test decides (marker_app), and the executor's settle set long (or short) so that the
machine's load cannot change what a pass sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from marker_app import APP, manifest, ready
from reconciler_helpers import Cluster, commit, converge_session, desired_at_head, wait_for

from gitorch.apply.reconciler import Reconciler
from gitorch.apply.session import Session
from gitorch.decide import StartReplica, StopReplica
from gitorch.decide.actions import Action
from gitorch.decide.batch import BatchHold
from gitorch.manifests.model import DesiredState

pytestmark = pytest.mark.parametrize("cluster", ["sqlite"], indirect=True)

#: A settle the test cannot outrun: the hold ends only when the partner answers.
LONG_SETTLE = 60.0
#: A settle the test waits out: the hold's bound.
SHORT_SETTLE = 0.3


def _starts(executed: Sequence[Action]) -> list[int]:
    return sorted(a.slot for a in executed if isinstance(a, StartReplica))


def _stops(executed: Sequence[Action]) -> int:
    return sum(1 for a in executed if isinstance(a, StopReplica))


def _answered(reconciler: Reconciler, replica_ids: Sequence[str]) -> bool:
    health = [reconciler.health.health(rid) for rid in replica_ids]
    return all(h is not None and h.first_ready_at is not None for h in health)


@dataclass(frozen=True)
class Rolling:
    """Mid-rollout: v2's first pair started (slots 1 and 2), the first of it answered."""

    reconciler: Reconciler
    v2: DesiredState
    markers: Path
    pair: tuple[str, ...]  # the pair's replica ids
    hold: BatchHold  # what holds the first of the pair back


def _first_of_pair_ready(
    cluster: Cluster, session: Session, tmp_path: Path, settle: float
) -> Rolling:
    """v1 converged with 4 ready replicas, v2 committed, the pass that started v2's
    first pair (neither ready yet) and then slot 1 made ready, with the executor's
    settle at ``settle``."""
    app, markers = tmp_path / "app.py", tmp_path / "markers"
    app.write_text(APP)
    markers.mkdir()
    ready(markers, "1", "all")
    commit(cluster.repo, {"api.yaml": manifest(cluster.port, "1", app, markers)}, "v1")
    converge_session(session, desired_at_head(cluster))
    commit(cluster.repo, {"api.yaml": manifest(cluster.port, "2", app, markers)}, "v2")
    v2 = desired_at_head(cluster)
    reconciler = session.reconciler_for(v2)
    reconciler.executor.ready_settle = settle
    first = reconciler.reconcile(v2)
    assert _starts(first.executed) == [1, 2] and _stops(first.executed) == 0, first.executed
    pair = reconciler.executor.last_started["api"]
    assert len(pair) == 2
    ready(markers, "2", 1)
    hold = wait_for(
        "the first of the pair held",
        lambda: (found := reconciler.executor.batch_hold()).held and found,
        30,
        0.02,
    )
    return Rolling(reconciler, v2, markers, pair, hold)


def test_the_first_of_a_pair_waits_for_its_partner(
    cluster: Cluster, session: Session, tmp_path: Path
) -> None:
    rolling = _first_of_pair_ready(cluster, session, tmp_path, LONG_SETTLE)
    reconciler, v2, pair = rolling.reconciler, rolling.v2, rolling.pair
    held = reconciler.reconcile(v2)
    assert _starts(held.executed) == [] and _stops(held.executed) == 0, held.executed
    assert reconciler.batch_hold.held == {pair[0]} or reconciler.batch_hold.held == {pair[1]}
    assert 0 < held.requeue_after <= LONG_SETTLE

    ready(rolling.markers, "2", 2)
    wait_for("the partner answered", lambda: _answered(reconciler, pair), 30)
    wave = reconciler.reconcile(v2)
    assert _starts(wave.executed) == [3, 4], wave.executed
    assert _stops(wave.executed) == 2, wave.executed


def test_a_partner_that_does_not_answer_holds_the_batch_for_the_settle_at_most(
    cluster: Cluster, session: Session, tmp_path: Path
) -> None:
    rolling = _first_of_pair_ready(cluster, session, tmp_path, SHORT_SETTLE)
    reconciler, hold = rolling.reconciler, rolling.hold
    wait_for(
        "the hold's end",
        lambda: not reconciler.executor.batch_hold().held,
        SHORT_SETTLE + 5,
        0.02,
    )
    assert hold.until is not None and reconciler.health.now() >= hold.until

    alone = reconciler.reconcile(rolling.v2)
    assert _starts(alone.executed) == [3] and _stops(alone.executed) == 1, alone.executed


def test_a_scale_up_of_a_healthy_spec_holds_nothing(
    cluster: Cluster, session: Session, tmp_path: Path
) -> None:
    """Only a rollout's batch is held: the replicas a scale-up adds take traffic as each
    answers (the executor remembers no batch of a spec that reached Healthy)."""
    app, markers = tmp_path / "app.py", tmp_path / "markers"
    app.write_text(APP)
    markers.mkdir()
    for slot in range(1, 5):
        ready(markers, "1", slot)
    commit(cluster.repo, {"api.yaml": manifest(cluster.port, "1", app, markers)}, "v1")
    converge_session(session, desired_at_head(cluster))
    commit(cluster.repo, {"api.yaml": manifest(cluster.port, "1", app, markers, 6)}, "six")
    six = desired_at_head(cluster)
    reconciler = session.reconciler_for(six)
    reconciler.executor.ready_settle = LONG_SETTLE
    grown = reconciler.reconcile(six)
    assert _starts(grown.executed) == [5, 6], grown.executed
    assert "api" not in reconciler.executor.last_started
    ready(markers, "1", 5)
    wait_for(
        "slot 5 ready in the pass's view",
        lambda: sum(1 for r in reconciler.observe(six)[0].services["api"].replicas if r.ready) == 5,
        30,
    )
    assert reconciler.batch_hold.held == frozenset()
