"""An analysis run survives a daemon SIGKILLed in the middle of it (built-in data plane).

Version 1 runs; version 2 (every answer a 500) starts a canary whose analysis step counts
4 measurements with failureLimit 1. The daemon is SIGKILLed as soon as the first failed
measurement is stored, and a new daemon starts on the same state. It must resume the run:
the stored failure still counts, so exactly one more failed measurement rolls version 2
back (a run started over would need two, and would show the first one twice), the first
measurement after the restart waits a full interval of the new process's figures, and
history and status show every measurement once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from progressive_helpers import (
    Load,
    World,
    commit_next,
    deploy_first,
    history_entry,
    process_progressive,
    rolled_back_to,
    status,
    wait_for,
)
from reconciler_helpers import get_version

from gitorch.state import AnalysisRunPhase, Measurement, StateStore

REPLICAS = 2
INTERVAL = 2.0  # seconds between analysis measurements
STRATEGY = f"""\
  strategy:
    type: Canary
    progressDeadlineSeconds: 60
    canary:
      steps:
        - setWeight: 50
        - analysis:
            interval: {INTERVAL:g}s
            count: 4
            failureLimit: 1
            minRequests: 5
            successRate: 0.99
        - pause: {{}}
"""


def measurements(reader: StateStore, revision: str) -> list[Measurement]:
    return reader.list_measurements("web", revision=revision, limit=None)


def test_a_killed_daemon_resumes_the_analysis_run(world: World) -> None:
    def make(version: str, env: dict[str, str] | None = None) -> str:
        return process_progressive(
            "web", port=world.port, version=version, strategy=STRATEGY, replicas=REPLICAS, env=env
        )

    first, good = deploy_first(world, "builtin", make("1"))
    reader = StateStore(world.state, readonly=True)
    try:
        with Load(world.port, threads=4) as load:
            load.wait_requests(50, 10)
            bad = commit_next(world, make("2", {"FAIL_MODE": "errors"}), "2")
            wait_for(
                "the first failed measurement",
                lambda: measurements(reader, bad),
                30,
                interval=0.02,
                describe=first.log_tail,
            )
        # Killed well within the interval before the next measurement (due 2 s later).
        with contextlib.suppress(ProcessLookupError):
            os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        killed_at = time.time()
        before = measurements(reader, bad)
        assert [m.phase.value for m in before] == ["failed"], before
        (run,) = reader.list_analysis_runs("web", revision=bad)
        assert (run.analysis, run.phase) == ("step-1", AnalysisRunPhase.RUNNING), run

        second = world.daemon("builtin")
        # The new daemon's balancer answers (half of it version 2's 500s): load it again.
        wait_for("the balancer", lambda: get_version(world.port) is not None, 15, interval=0.05)
        with Load(world.port, threads=4):
            wait_for(
                "the rollback",
                rolled_back_to(second, good, REPLICAS),
                30,
                describe=lambda: f"{measurements(reader, bad)}\n{second.log_tail()}",
            )

        taken = measurements(reader, bad)
        assert [m.phase.value for m in taken] == ["failed", "failed"], taken
        assert taken[0].id == before[0].id  # the one from before the kill, kept, not re-taken
        after = taken[1]
        assert after.taken_at > killed_at
        # Its window started at the restart and lasted a full interval: requests were judged.
        assert after.value["requests"] >= 5 and after.value["errors5xx"] > 0, after.value
        assert after.taken_at - killed_at >= INTERVAL, (after.taken_at, killed_at)
        (run,) = reader.list_analysis_runs("web", revision=bad)
        assert run.phase is AnalysisRunPhase.FAILED, run
        assert "2 failed measurements (failureLimit 1)" in run.message, run
        assert {m.run_id for m in taken} == {run.id}
    finally:
        reader.close()

    entry = history_entry(second, bad)
    assert entry["result"] == "rolled-back", entry
    assert "2 failed measurements" in (entry.get("reason") or ""), entry
    shown = [m for m in status(second).get("analysis", []) if m["revision"] == bad]
    assert [(m["analysis"], m["phase"]) for m in shown] == [("step-1", "failed")] * 2, shown
    assert len({m["takenAt"] for m in shown}) == 2, shown
