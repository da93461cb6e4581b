"""Canary verdicts end to end, on the built-in data plane and on HAProxy: a failing and a
slow version are aborted by their analysis, an analysis without traffic pauses as
inconclusive until `gitorch promote`, and `gitorch abort` switches back at once.

The analysis judges the data plane's own per-version figures; the daemon runs with
``--resync 0.5`` so a pass comes at least twice a second.
"""

from __future__ import annotations

import time

from progressive_helpers import (
    RESYNC,
    Load,
    Seen,
    Watcher,
    World,
    action,
    commit_next,
    deploy_first,
    history_entry,
    on_revision,
    process_progressive,
    rolled_back_to,
    status,
    wait_for,
)

REPLICAS = 2
INTERVAL = 2.0  # seconds between analysis measurements
WEIGHT = 20


def canary_with_analysis(analysis: str) -> str:
    return f"""\
  strategy:
    type: Canary
    progressDeadlineSeconds: 60
    canary:
      steps:
        - setWeight: {WEIGHT}
        - analysis: {{interval: {INTERVAL:g}s, count: 2, {analysis}}}
        - setWeight: 50
        - pause: {{}}
"""


def run_until_rolled_back(
    world: World, plane: str, strategy: str, env: dict[str, str], threads: int
) -> tuple[Load, Watcher, str, str]:
    """Version 1, then a bad version 2 under load until the daemon has rolled it back.
    Returns the (stopped) load and watcher, and both revisions."""

    def make(version: str, extra: dict[str, str] | None = None) -> str:
        return process_progressive(
            "web", port=world.port, version=version, strategy=strategy, replicas=REPLICAS, env=extra
        )

    daemon, good = deploy_first(world, plane, make("1"))
    with Load(world.port, threads=threads) as load, Watcher(daemon, "web", load=load) as watch:
        load.wait_requests(50, 10)
        bad = commit_next(world, make("2", env), "2")
        watch.until(f"weight {WEIGHT}", lambda s: s.weight == WEIGHT, 30)
        wait_for(
            "the rollback",
            rolled_back_to(daemon, good, REPLICAS),
            15,  # an analysis fails within seconds: no need to wait longer
            describe=lambda: f"analysis: {status(daemon).get('analysis')}\n{watch.describe()}",
        )
        settled = load.tally()
        after = load.wait_requests(200, 20) - settled
    assert after.versions == {"1": after.ok} and after.failed == 0, f"after the rollback: {after}"
    return load, watch, good, bad


def weighted_span(seen: list[Seen]) -> tuple[Seen, Seen]:
    """The first reading with the canary weight, and the first one without it after that."""
    first = next(i for i, s in enumerate(seen) if s.weight == WEIGHT)
    back = next(s for s in seen[first:] if s.weight != WEIGHT)  # 0, or 100 once rolled back
    return seen[first], back


def assert_analysis_recorded(world: World, bad: str, words: str) -> None:
    """History says rolled-back with the analysis figures; status lists the failed run."""
    daemon = world.daemons[0]
    entry = history_entry(daemon, bad)
    assert entry["result"] == "rolled-back", entry
    assert words in (entry.get("reason") or ""), entry
    measured = [m for m in status(daemon).get("analysis", []) if m["revision"] == bad]
    failed = [m for m in measured if m["phase"] == "failed"]
    assert failed and words in failed[0]["message"], measured
    assert failed[0]["value"], failed[0]  # the figures the verdict came from


def test_bad_version_aborted_by_analysis(world: World, plane: str) -> None:
    strategy = canary_with_analysis("minRequests: 20, successRate: 0.99")
    load, watch, _, bad = run_until_rolled_back(
        world, plane, strategy, {"FAIL_MODE": "errors"}, threads=4
    )
    first, back = weighted_span(watch.seen)
    assert first.tally is not None and back.tally is not None
    # Version 2 carries WEIGHT% from the first reading at that weight until the first back
    # at 0 (each +/- one resync). It fails at the first measurement (failureLimit 0), which
    # is INTERVAL after the analysis step starts (a pass after the weight took effect), and
    # the pass that measures switches back: at most INTERVAL + 2 passes, plus 1 s of margin
    # for the readings' own latency and a loaded machine.
    span = back.at - first.at
    limit = INTERVAL + 2 * RESYNC + 1.0
    assert span <= limit, f"version 2 was weighted for {span:.1f}s (limit {limit:.1f}s)"
    rate = load.total / (back.at - watch.seen[0].at + 1e-9)  # requests per second, this run
    bound = (WEIGHT + 5) / 100 * rate * (limit + 2 * RESYNC)
    failed = len(load.failures)
    print(
        f"{failed} failed of {load.total} ({rate:.0f}/s), {span:.1f}s weighted, bound {bound:.0f}"
    )
    assert 0 < failed <= bound, f"{failed} failed requests; bound {bound:.0f}"
    # Within the weighted span the failures are about WEIGHT% of the requests, never more
    # than WEIGHT + 5 points (the span is widened by a resync at both ends).
    during = back.tally.total - first.tally.total
    assert failed <= (WEIGHT + 5) / 100 * during + 2 * RESYNC * rate * (WEIGHT / 100), (
        f"{failed} failed of {during} while weighted"
    )
    assert all("failing on purpose" in f for f in load.failures), load.failures[:3]
    assert_analysis_recorded(world, bad, "success rate")


def test_slow_version_aborted_by_latency(world: World, plane: str) -> None:
    # Slow answers hold a client thread for 0.8 s: 8 threads and minRequests 5 give the
    # slow version enough requests within one 2 s interval.
    strategy = canary_with_analysis("minRequests: 5, maxLatencyP99: 300ms")
    load, watch, _, bad = run_until_rolled_back(
        world, plane, strategy, {"SLOW_MS": "800"}, threads=8
    )
    first, back = weighted_span(watch.seen)
    span = back.at - first.at
    # The slow replicas answer 0.8 s late, so the measuring pass may start after them.
    assert span <= INTERVAL + 2 * RESYNC + 2.0, f"version 2 was weighted for {span:.1f}s"
    assert load.failures == [], load.failures[:5]
    assert_analysis_recorded(world, bad, "p99 latency")


def test_no_traffic_pauses_inconclusive(world: World, plane: str) -> None:
    strategy = canary_with_analysis("minRequests: 20, successRate: 0.99")

    def make(version: str) -> str:
        return process_progressive(
            "web", port=world.port, version=version, strategy=strategy, replicas=REPLICAS
        )

    daemon, _ = deploy_first(world, plane, make("1"))
    with Watcher(daemon, "web") as watch:
        new = commit_next(world, make("2"), "2")
        paused = watch.until(
            "the inconclusive pause", lambda s: s.phase == "Paused" and s.step == 1, 30
        )
        measured = [m for m in status(daemon).get("analysis", []) if m["revision"] == new]
        assert measured and measured[-1]["phase"] == "inconclusive", measured
        assert "not enough to judge" in measured[-1]["message"], measured
        # Two more intervals: it stays paused on the analysis step and never promotes itself.
        time.sleep(2 * INTERVAL)
        held = [s for s in watch.seen if s.at >= paused.at]
        assert all(s.phase == "Paused" and s.step == 1 for s in held), watch.describe()
        assert held[-1].weight == WEIGHT
        action(daemon, "promote")
        watch.until("the next step after promote", lambda s: s.step is not None and s.step >= 2, 10)
        # Weight 50 then the manual pause; promote once more to finish.
        watch.until("the manual pause", lambda s: s.phase == "Paused" and s.step == 3, 20)
        action(daemon, "promote")
        wait_for(
            "version 2 everywhere", on_revision(daemon, new, REPLICAS), 30, describe=watch.describe
        )


def test_abort_during_pause_switches_back_at_once(world: World, plane: str) -> None:
    strategy = """\
  strategy:
    type: Canary
    progressDeadlineSeconds: 60
    canary:
      steps:
        - setWeight: 30
        - pause: {}
"""

    def make(version: str) -> str:
        return process_progressive(
            "web", port=world.port, version=version, strategy=strategy, replicas=REPLICAS
        )

    daemon, good = deploy_first(world, plane, make("1"))
    with Load(world.port, threads=4) as load, Watcher(daemon, "web", load=load) as watch:
        load.wait_requests(50, 10)
        new = commit_next(world, make("2"), "2")
        watch.until("the pause at 30%", lambda s: s.phase == "Paused" and s.weight == 30, 30)
        load.wait_requests(200, 10)
        assert load.tally().versions["2"] > 0
        asked = time.monotonic()
        action(daemon, "abort")
        returned = time.monotonic()  # the daemon may act before the CLI has returned
        zero = watch.until("weight 0", lambda s: s.weight != 30, 5, since=asked)
        assert zero.weight == 0 or zero.phase == "RolledBack", zero
        assert zero.at - returned <= RESYNC + 0.5, f"weight 0 only {zero.at - returned:.2f}s later"
        wait_for(
            "the rollback", rolled_back_to(daemon, good, REPLICAS), 30, describe=watch.describe
        )
        # From one resync after weight 0 was stored, no request reaches version 2.
        mark = watch.until("a reading after the switch", lambda s: s.at >= zero.at + RESYNC, 5)
        assert mark.tally is not None
        after = load.wait_requests(300, 20) - mark.tally
    assert after.versions["2"] == 0 and after.ok > 0, after
    assert load.failures == [], f"{len(load.failures)} failed of {load.total}: {load.failures[:5]}"
    entry = history_entry(daemon, new)
    assert entry["result"] == "rolled-back" and "abort" in (entry.get("reason") or ""), entry
