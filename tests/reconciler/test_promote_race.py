"""A `gitorch promote` / `gitorch abort` that arrives while a pass runs is acted on, not lost.

The reconciler runs in this process (a real Session: process driver, built-in load
balancer, health monitor); the progressive strategy's ``decide`` is wrapped so the request
is made, through a second connection as the CLI would, after the pass read the rollout
record and decided on it, before it saves it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from reconciler_helpers import Cluster, process_service

from gitorch.apply.session import Session
from gitorch.decide import PassDecision
from gitorch.manifests import ManifestLoader
from gitorch.manifests.model import DesiredState
from gitorch.sources.base import ManifestFile
from gitorch.state import RolloutPhase, RolloutRecord, StateStore

NAME = "web"
CANARY = """\
  strategy:
    type: Canary
    progressDeadlineSeconds: 60
    autoRollback: true
    canary:
      steps:
        - setWeight: 50
        - pause: {}
"""


def desired(port: int, version: str) -> DesiredState:
    text = process_service(NAME, port=port, version=version, replicas=1, strategy=CANARY)
    data = text.encode()
    file = ManifestFile("web.yaml", hashlib.sha1(data).hexdigest(), data)
    result = ManifestLoader().load([file], revision=version * 40)
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state


class Passes:
    """Runs reconcile passes of one desired state until a condition on the record holds."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def until(
        self, state: DesiredState, ok: Callable[[RolloutRecord], bool], timeout: float = 30.0
    ) -> RolloutRecord:
        deadline = time.monotonic() + timeout
        seen: RolloutRecord | None = None
        while time.monotonic() < deadline:
            self.session.reconciler_for(state).reconcile(state)
            seen = self.session.store.get_rollout(NAME)
            if seen is not None and ok(seen):
                return seen
            time.sleep(0.1)
        pytest.fail(f"not reached in {timeout}s; last record: {seen}")


def request_mid_pass(
    session: Session, cli: StateStore, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arm the reconciler: in its next pass, ``what`` is requested right after the rollout
    strategy decided on the record read at the pass's start, before that record is saved."""
    reconciler = session.reconciler
    assert reconciler is not None
    original = reconciler.decide
    armed = [True]

    def decide_then_request(*args: Any, **kwargs: Any) -> PassDecision:
        decision = original(*args, **kwargs)
        if armed[0]:
            armed[0] = False
            assert cli.request(NAME, what) is True  # the operator, mid-pass
        return decision

    monkeypatch.setattr(reconciler, "decide", decide_then_request)


def paused_on_v2(cluster: Cluster, session: Session) -> tuple[Passes, RolloutRecord]:
    passes = Passes(session)
    passes.until(desired(cluster.port, "1"), lambda r: r.phase is RolloutPhase.HEALTHY)
    paused = passes.until(desired(cluster.port, "2"), lambda r: r.phase is RolloutPhase.PAUSED)
    assert paused.step == 1 and paused.weight == 50  # the manual pause
    return passes, paused


def test_a_promote_arriving_mid_pass_is_acted_on(
    cluster: Cluster, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes, paused = paused_on_v2(cluster, session)
    v2 = desired(cluster.port, "2")
    with StateStore(cluster.store_location) as cli:
        request_mid_pass(session, cli, "promote", monkeypatch)
        session.reconciler_for(v2).reconcile(v2)  # saw no promote; must not erase it
        after = session.store.get_rollout(NAME)
        assert after is not None and after.step == paused.step
        assert after.promote_requested, "the pass's save wrote the promote back to 0"
    done = passes.until(v2, lambda r: r.phase is RolloutPhase.HEALTHY)
    assert done.step == 2 and done.weight == 100 and not done.promote_requested
    assert done.spec_digest == v2.services[NAME].template_digest


def test_an_abort_arriving_mid_pass_is_acted_on(
    cluster: Cluster, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes, paused = paused_on_v2(cluster, session)
    v2 = desired(cluster.port, "2")
    with StateStore(cluster.store_location) as cli:
        request_mid_pass(session, cli, "abort", monkeypatch)
        session.reconciler_for(v2).reconcile(v2)
        after = session.store.get_rollout(NAME)
        assert after is not None and after.abort_requested, "the abort was written back to 0"
    rolled = passes.until(v2, lambda r: r.phase is RolloutPhase.ROLLED_BACK)
    assert rolled.failed_digest == v2.services[NAME].template_digest
    assert not rolled.abort_requested  # used up by the rollback, in its transaction
