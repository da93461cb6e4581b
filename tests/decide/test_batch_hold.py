"""decide.batch: the replicas of a batch that answered wait for the rest, within a bound."""

from __future__ import annotations

import pytest

from gitorch.decide.batch import NO_HOLD, BatchHold, batch_hold, merged_holds

SETTLE = 0.5


def test_nothing_is_held_before_any_answered() -> None:
    assert batch_hold({"a": None, "b": None}, 100.0, SETTLE) is NO_HOLD


def test_nothing_is_held_once_all_answered() -> None:
    assert batch_hold({"a": 100.0, "b": 100.3}, 100.3, SETTLE) is NO_HOLD


def test_no_batch_holds_nothing() -> None:
    assert batch_hold({}, 100.0, SETTLE) is NO_HOLD


def test_the_first_to_answer_waits_for_its_partner() -> None:
    hold = batch_hold({"a": 100.0, "b": None}, 100.2, SETTLE)
    assert hold == BatchHold(frozenset({"a"}), 100.5)
    assert hold.seconds_left(100.2) == pytest.approx(0.3)


def test_the_hold_ends_settle_after_the_first_answered() -> None:
    """A partner slow or never ready delays the batch by ``settle`` at most."""
    assert batch_hold({"a": 100.0, "b": None}, 100.5, SETTLE) is NO_HOLD
    assert batch_hold({"a": 100.0, "b": 100.4, "c": None}, 100.6, SETTLE) is NO_HOLD


def test_all_that_answered_are_held_from_the_first_answer_on() -> None:
    hold = batch_hold({"a": 100.1, "b": 100.0, "c": None}, 100.2, SETTLE)
    assert hold.held == {"a", "b"} and hold.until == 100.5


def test_nothing_held_has_no_time_left() -> None:
    assert NO_HOLD.seconds_left(100.0) == 0.0
    assert BatchHold(frozenset({"a"}), 100.5).seconds_left(101.0) == 0.0


def test_holds_of_several_services_merge_until_the_first_ends() -> None:
    api = batch_hold({"a1": 100.0, "a2": None}, 100.1, SETTLE)
    web = batch_hold({"w1": 100.2, "w2": None}, 100.3, SETTLE)
    merged = merged_holds([api, NO_HOLD, web])
    assert merged == BatchHold(frozenset({"a1", "w1"}), 100.5)


def test_no_holds_merge_to_none() -> None:
    assert merged_holds([]) is NO_HOLD
    assert merged_holds([NO_HOLD, NO_HOLD]) is NO_HOLD
