"""`gitorch promote` / `gitorch abort` requests survive a concurrent save of the rollout record.

The reconciler reads a rollout record at the start of a pass and saves it at the end; a
request made in between (by the CLI or the API, through another connection) must still be
pending after that save, and using a request up is a compare-and-clear.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from gitorch.state import RolloutPhase, RolloutRecord, StateStore
from gitorch.state.requests import request_action

SHA = "a" * 40


def paused_canary() -> RolloutRecord:
    return RolloutRecord(
        service="web",
        revision=SHA,
        spec_digest="sha256:new",
        strategy="Canary",
        phase=RolloutPhase.PAUSED,
        spec={"replicas": 2},
        step=3,
        weight=50,
        previous_digest="sha256:old",
    )


@pytest.fixture
def cli(location: str, store: StateStore) -> Iterator[StateStore]:
    """A second store on the same state: its own connection, as the CLI's process has."""
    opened = StateStore(location)
    yield opened
    opened.close()


@pytest.mark.parametrize("what", ["promote", "abort"])
def test_a_request_made_after_the_read_survives_the_save(
    store: StateStore, cli: StateStore, what: str
) -> None:
    store.upsert_rollout(paused_canary())
    read = store.get_rollout("web")  # a pass starts
    assert read is not None and not read.promote_requested and not read.abort_requested
    assert cli.request("web", what) is True  # the operator, mid-pass
    saved = store.upsert_rollout(replace(read, message="still paused", weight=50))  # pass ends
    stored = store.get_rollout("web")
    assert stored is not None and stored.message == "still paused"
    flags = {"promote": stored.promote_requested, "abort": stored.abort_requested}
    assert flags == {"promote": what == "promote", "abort": what == "abort"}
    assert saved == stored  # what upsert returns carries the flags as stored


def test_saving_a_record_with_a_flag_set_does_not_invent_a_request(store: StateStore) -> None:
    store.upsert_rollout(paused_canary())
    read = store.get_rollout("web")
    assert read is not None
    store.upsert_rollout(replace(read, promote_requested=True, abort_requested=True))
    stored = store.get_rollout("web")
    assert stored is not None and not stored.promote_requested and not stored.abort_requested


def test_a_new_row_takes_its_flags_from_the_record(store: StateStore) -> None:
    stored = store.upsert_rollout(replace(paused_canary(), promote_requested=True))
    assert stored.promote_requested and not stored.abort_requested
    assert store.get_rollout("web") == stored


def test_consume_is_a_compare_and_clear(store: StateStore, cli: StateStore) -> None:
    store.upsert_rollout(paused_canary())
    assert store.consume_request("web", "promote") is False  # nothing pending
    cli.request("web", "promote")
    cli.request("web", "abort")
    assert store.consume_request("web", "promote") is True
    assert store.consume_request("web", "promote") is False  # used up exactly once
    stored = store.get_rollout("web")
    assert stored is not None and not stored.promote_requested
    assert stored.abort_requested  # the other request is left alone
    assert store.consume_request("nobody", "abort") is False
    with pytest.raises(ValueError, match="unknown rollout request"):
        store.consume_request("web", "pause")
    with pytest.raises(ValueError, match="unknown rollout request"):
        cli.request("web", "pause")


def test_a_consume_rolled_back_with_its_transaction_leaves_the_request(
    store: StateStore, cli: StateStore
) -> None:
    store.upsert_rollout(paused_canary())
    cli.request("web", "promote")
    read = store.get_rollout("web")
    assert read is not None
    with pytest.raises(RuntimeError), store.transaction():
        assert store.consume_request("web", "promote") is True
        store.upsert_rollout(replace(read, step=4))
        raise RuntimeError("the pass dies before the step change is committed")
    stored = store.get_rollout("web")
    assert stored is not None and stored.step == 3 and stored.promote_requested


def test_a_new_rollout_resets_requests_made_for_the_previous_one(
    store: StateStore, cli: StateStore
) -> None:
    store.upsert_rollout(paused_canary())
    cli.request("web", "promote")
    cli.request("web", "abort")
    fresh = replace(paused_canary(), spec_digest="sha256:newer", phase=RolloutPhase.PROGRESSING)
    stored = store.upsert_rollout(fresh, reset_requests=True)
    assert not stored.promote_requested and not stored.abort_requested
    assert store.get_rollout("web") == stored


def test_a_request_is_idempotent_and_refused_without_a_rollout(
    store: StateStore, cli: StateStore
) -> None:
    assert cli.request("web", "promote") is False
    store.upsert_rollout(paused_canary())
    assert cli.request("web", "promote") is True
    assert cli.request("web", "promote") is True
    assert store.consume_request("web", "promote") is True  # two requests before a pass: one
    assert store.consume_request("web", "promote") is False


def test_the_answer_counts_steps_as_status_does(store: StateStore) -> None:
    steps = [{"setWeight": 20}, {"pause": {}}, {"analysis": {}}, {"setWeight": 50}, {"pause": {}}]
    canonical = {
        "spec": {"replicas": 2, "strategy": {"type": "Canary", "canary": {"steps": steps}}}
    }
    store.upsert_rollout(replace(paused_canary(), spec=canonical, step=4))
    accepted, message = request_action(store, "web", "promote", "user:ann@host")
    # Status says "canary step 5/5 (pause until `gitorch promote`)": the same number.
    assert (accepted, message) == (True, "promote of web requested (step 5/5, weight 50%)")
    store.upsert_rollout(replace(paused_canary(), step=None, weight=100))
    assert request_action(store, "web", "abort", "api")[1] == "abort of web requested (weight 100%)"
