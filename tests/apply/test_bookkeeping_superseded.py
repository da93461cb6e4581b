"""A revision a newer commit replaced before it converged: the history says so, and names
the services whose new version had already been given all the traffic (they went live,
and the next rollout keeps them as its stable version)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

from gitorch.apply.bookkeeping import Bookkeeper, superseded_reason
from gitorch.decide import PassDecision
from gitorch.decide.backoff import DEFAULT_CRASH_LOOP
from gitorch.live.model import LiveState
from gitorch.manifests.model import DesiredState
from gitorch.state import RevisionResult, RolloutPhase, RolloutRecord, StateStore

OLD, NEW = "a" * 40, "b" * 40


def rollout(service: str, strategy: str, weight: int, phase: RolloutPhase) -> RolloutRecord:
    return RolloutRecord(
        service=service,
        revision=OLD,
        spec_digest=f"{service}-2",
        strategy=strategy,
        phase=phase,
        spec={},
        step=3,
        weight=weight,
        previous_digest=f"{service}-1",
    )


def test_a_promoted_canary_is_named_and_a_canary_below_all_the_traffic_is_not() -> None:
    records = [
        rollout("web", "Canary", 100, RolloutPhase.PROGRESSING),  # promoted, old ones stopping
        rollout("api", "Canary", 50, RolloutPhase.PAUSED),  # at its pause
        rollout("shop", "BlueGreen", 100, RolloutPhase.PAUSED),  # switched
        rollout("cache", "Canary", 100, RolloutPhase.PROGRESSING),  # not the revision's
    ]
    reason = superseded_reason(NEW, ["web", "api", "shop"], records)
    assert reason == (
        f"superseded by {NEW[:12]} before it converged; shop, web: its new version already"
        " had all the traffic and stays as the stable one"
    )
    assert superseded_reason(NEW, ["api"], records) == (
        f"superseded by {NEW[:12]} before it converged"
    )


def test_the_history_entry_of_a_superseded_revision_says_what_went_live(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state") as store:
        books = Bookkeeper(store, DEFAULT_CRASH_LOOP)
        applying = store.record_revision(OLD, services=["web"])
        store.upsert_rollout(rollout("web", "Canary", 100, RolloutPhase.PROGRESSING))
        desired = DesiredState(NEW, str(tmp_path), {}, {}, {}, digest="empty")
        live = LiveState(cluster="c", observed_at=0.0, nodes={}, services={})
        nothing_unplaced = cast(PassDecision, SimpleNamespace(unplaced=()))
        assert books.revision_started(desired, live, None, nothing_unplaced) is None
        (superseded,) = [r for r in store.list_revisions() if r.id == applying.id]
        assert superseded.result is RevisionResult.SUPERSEDED
        assert superseded.reason.endswith(
            "web: its new version already had all the traffic and stays as the stable one"
        )
