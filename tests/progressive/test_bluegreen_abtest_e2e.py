"""Blue-green and A/B end to end, on the built-in data plane and on HAProxy.

Blue-green: the new colour answers on previewPort before the switch while the service
port keeps the old one; autoPromotionSeconds switches all traffic at once with no failed
request; the old colour stays scaleDownDelaySeconds, then goes; `gitorch abort` inside that
delay switches back at once, again with no failed request.

A/B: requests carrying the header go to the new version, the others never reach it.
"""

from __future__ import annotations

import time

from progressive_helpers import (
    RESYNC,
    Load,
    Watcher,
    World,
    action,
    commit_next,
    deploy_first,
    free_port,
    history_entry,
    on_revision,
    process_progressive,
    rolled_back_to,
    wait_for,
)
from reconciler_helpers import get_version

REPLICAS = 2
AUTO_PROMOTION = 3
SCALE_DOWN = 3


def bluegreen(preview: int, auto: int, scale_down: int) -> str:
    return f"""\
  strategy:
    type: BlueGreen
    progressDeadlineSeconds: 60
    blueGreen:
      previewPort: {preview}
      autoPromotionSeconds: {auto}
      scaleDownDelaySeconds: {scale_down}
"""


def revisions(world: World) -> set[str]:
    svc = world.daemons[0].service("web")
    return {i["revision"] for i in svc["instances"]} if svc else set()


def test_bluegreen_preview_switch_and_scale_down(world: World, plane: str) -> None:
    preview = free_port()
    strategy = bluegreen(preview, AUTO_PROMOTION, SCALE_DOWN)

    def make(version: str) -> str:
        return process_progressive(
            "web", port=world.port, version=version, strategy=strategy, replicas=REPLICAS
        )

    daemon, old = deploy_first(world, plane, make("1"))
    with Load(world.port) as load, Watcher(daemon, "web", load=load) as watch:
        load.wait_requests(50, 10)
        new = commit_next(world, make("2"), "2")
        # Ten fresh connections in a row: with worker processes each connection lands on
        # one of them, and they take a new table within a moment of each other.
        wait_for(
            "the preview port",
            lambda: all(get_version(preview) == "2" for _ in range(10)),
            30,
            0.05,
        )
        previewed = time.monotonic()
        # Before the switch: the preview port serves only the new colour, the service port
        # only the old one.
        with Load(preview, threads=2) as peek:
            before = load.tally()
            peek.wait_requests(200, 10)
            main_before = load.tally() - before
        assert peek.failures == [] and peek.versions == {"2": peek.ok}, peek.versions
        switch = watch.until("the switch", lambda s: s.weight == 100 and s.step == 1, 30)
        assert main_before.versions == {"1": main_before.ok}, main_before
        # The colour was ready at most a probe period before the preview answered.
        waited = switch.at - previewed
        assert AUTO_PROMOTION - 1.0 <= waited <= AUTO_PROMOTION + 2.0, (
            f"switched after {waited:.1f}s"
        )
        # The old colour is still there during the delay...
        time.sleep(SCALE_DOWN / 2)
        assert revisions(world) == {old, new}, revisions(world)
        # ... and gone after it.
        wait_for("only the new colour", on_revision(daemon, new, REPLICAS), 20, 0.05)
        gone = time.monotonic() - switch.at
        assert SCALE_DOWN - 0.5 <= gone <= SCALE_DOWN + 3.0, f"old colour removed {gone:.1f}s after"
        mark = watch.until("a reading after the switch", lambda s: s.at >= switch.at + RESYNC, 5)
        assert mark.tally is not None
        after = load.wait_requests(200, 10) - mark.tally
    assert after.versions == {"2": after.ok}, after
    assert load.failures == [], f"{len(load.failures)} failed of {load.total}: {load.failures[:5]}"
    assert not get_version(preview), "the preview port still answers after the switch"


def test_bluegreen_abort_in_scale_down_delay(world: World, plane: str) -> None:
    strategy = bluegreen(free_port(), 1, 60)

    def make(version: str) -> str:
        return process_progressive(
            "web", port=world.port, version=version, strategy=strategy, replicas=REPLICAS
        )

    daemon, old = deploy_first(world, plane, make("1"))
    with Load(world.port) as load, Watcher(daemon, "web", load=load) as watch:
        load.wait_requests(50, 10)
        new = commit_next(world, make("2"), "2")
        switch = watch.until("the switch", lambda s: s.weight == 100 and s.step == 1, 30)
        mark = watch.until("a reading after the switch", lambda s: s.at >= switch.at + RESYNC, 5)
        assert mark.tally is not None
        switched = load.wait_requests(200, 10) - mark.tally
        assert switched.versions == {"2": switched.ok}, switched
        asked = time.monotonic()
        action(daemon, "abort")
        returned = time.monotonic()
        back = watch.until("the switch back", lambda s: s.weight != 100, 5, since=asked)
        assert back.at - returned <= RESYNC + 0.5, f"switched back {back.at - returned:.2f}s late"
        wait_for("the rollback", rolled_back_to(daemon, old, REPLICAS), 30, describe=watch.describe)
        mark = watch.until("a reading after the switch back", lambda s: s.at >= back.at + RESYNC, 5)
        assert mark.tally is not None
        after = load.wait_requests(200, 10) - mark.tally
    assert after.versions == {"1": after.ok}, after
    assert load.failures == [], f"{len(load.failures)} failed of {load.total}: {load.failures[:5]}"
    entry = history_entry(daemon, new)
    assert entry["result"] == "rolled-back" and "abort" in (entry.get("reason") or ""), entry


def test_abtest_header_goes_to_new_version_only(world: World, plane: str) -> None:
    strategy = """\
  strategy:
    type: ABTest
    progressDeadlineSeconds: 60
    abTest:
      match:
        - header: {name: X-Variant, exact: b}
      duration: 10m
"""

    def make(version: str) -> str:
        return process_progressive(
            "web", port=world.port, version=version, strategy=strategy, replicas=REPLICAS
        )

    daemon, _ = deploy_first(world, plane, make("1"))
    with Load(world.port) as others, Watcher(daemon, "web", load=others) as watch:
        others.wait_requests(50, 10)
        commit_next(world, make("2"), "2")
        started = watch.until("the test", lambda s: s.step == 1, 30)
        time.sleep(RESYNC)  # the rules reach the data plane within the pass
        with Load(world.port, threads=2, headers={"X-Variant": "b"}) as variant:
            variant.wait_requests(400, 20)
        others.wait_requests(400, 20)
        still = watch.last()
    assert still is not None and still.step == 1 and still.phase != "Healthy", watch.describe()
    assert started.tally is not None
    assert variant.failures == [] and variant.versions == {"2": variant.ok}, variant.versions
    assert others.failures == [], others.failures[:5]
    assert others.versions["2"] == 0 and others.versions["1"] > 0, others.versions
