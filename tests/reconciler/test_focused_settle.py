"""After a commit's focused pass, the whole pass waits for a partly ready batch as any
pass does (issue 20, item 3).

The focused pass starts the rollout's first pair and the whole pass follows at once;
when the first of the pair was ready already and its partner not yet, that whole pass
replaced one old replica alone, and the partner's readiness made a wave of one: five
batches in six waves ([2, 1, 2, 2, 2, 1]) in 6 of 14 benchmark runs. The pass itself
now holds the first back (test_batch_release.py); the daemon waits before it so as not
to spend a whole pass on nothing. The loop's order is checked here with a stand-in
session (the waves themselves: bench_rollout.py's events).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gitorch.apply.session import SessionOptions
from gitorch.daemon import Daemon, DaemonOptions
from gitorch.decide.batch import READY_SETTLE, BatchHold, batch_hold
from gitorch.errors import GitorchError

PARTNER_READY_AFTER = 0.2


class _Executor:
    def __init__(self) -> None:
        self.first_ready: dict[str, float | None] = {}

    def batch_hold(self) -> BatchHold:
        return batch_hold(dict(self.first_ready), time.time(), READY_SETTLE)


class _Health:
    now = staticmethod(time.time)


class _Reconciler:
    def __init__(self, calls: list[tuple[str, float]]) -> None:
        self.calls = calls
        self.executor = _Executor()
        self.health = _Health()

    def reconcile(self, desired: Any, commit: Any, preempted: Any = None) -> Any:
        self.calls.append(("whole", time.monotonic()))
        raise GitorchError("the stand-in stops here")


class _Secrets:
    @staticmethod
    def resolve(desired: Any) -> Any:
        return desired


class _Session:
    leading = True
    secrets = _Secrets()

    def __init__(self, reconciler: _Reconciler) -> None:
        self.reconciler = reconciler

    def reconciler_for(self, desired: Any) -> _Reconciler:
        return self.reconciler

    def store_unstored_table(self) -> None:
        return None  # no etcd: no table for other hosts


@pytest.mark.parametrize("first_ready", [True, False], ids=["first-ready", "none-ready-yet"])
def test_the_whole_pass_after_a_focused_pass_waits_for_the_pair(
    tmp_path: Path, first_ready: bool
) -> None:
    """The focused pass ends with the first of its pair ready: the whole pass waits until
    the pair answered, within READY_SETTLE. With neither ready yet it runs at once (a
    readiness during it is held back by the pass itself)."""
    assert PARTNER_READY_AFTER < READY_SETTLE
    daemon = Daemon(
        DaemonOptions(
            repo=str(tmp_path), ref=None, path="", session=SessionOptions(state_dir=tmp_path)
        )
    )
    calls: list[tuple[str, float]] = []
    reconciler = _Reconciler(calls)
    daemon.session = _Session(reconciler)  # type: ignore[assignment]
    daemon._desired = object()  # type: ignore[assignment]
    daemon._focus = frozenset({"api"})
    daemon._fetch_requested = False  # the loop fetched the commit

    def partner_ready() -> None:
        time.sleep(PARTNER_READY_AFTER)
        reconciler.executor.first_ready["partner"] = time.time()
        daemon._health_changed("partner", type("Ready", (), {"ready": True})())

    def focused(desired: Any, commit: Any) -> None:
        daemon._focus = frozenset()
        calls.append(("focused", time.monotonic()))
        # The pair is started; the first one answered its probe during the pass, or not.
        executor = reconciler.executor
        executor.first_ready = {"first": time.time() if first_ready else None, "partner": None}
        if first_ready:
            daemon._health_changed("first", type("Ready", (), {"ready": True})())
        threading.Thread(target=partner_ready, daemon=True).start()

    daemon._reconcile_focused = focused  # type: ignore[method-assign]
    daemon._reconcile_once()
    assert [name for name, _ in calls] == ["focused", "whole"], calls
    waited = calls[1][1] - calls[0][1]
    if first_ready:
        assert PARTNER_READY_AFTER - 0.05 <= waited < READY_SETTLE + 0.2, waited
    else:
        assert waited < PARTNER_READY_AFTER - 0.05, waited
