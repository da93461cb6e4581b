"""Per-version traffic in a real daemon's /metrics and in ``gitorch status``.

A canary of the example app (process driver) pauses at 50% with a version that answers
500 after 60 ms; requests sent by the test one at a time are counted per version in
/metrics (requests, 5xx, cumulative latency buckets) and in ``gitorch status web``; the
promotion removes the old version and no counter goes down. Once per data plane.
"""

from __future__ import annotations

import http.client
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import parse_prometheus
from progressive_helpers import (
    World,
    action,
    commit_next,
    deploy_first,
    on_revision,
    process_progressive,
    world_in,
)
from reconciler_helpers import CANARY_PAUSED_AT_HALF, gitorch, wait_for


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with world_in(tmp_path) as made:
        yield made


def send(port: int, count: int) -> dict[int, int]:
    """``count`` GETs one after the other on one keep-alive connection: status -> count."""
    seen: dict[int, int] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(count):
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            seen[response.status] = seen.get(response.status, 0) + 1
    finally:
        conn.close()
    return seen


Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(daemon: object) -> Series:
    """Every web sample of /metrics (parsed strictly), keyed by name and labels."""
    code, text = daemon.request("GET", "/metrics")  # type: ignore[attr-defined]
    assert code == 200, text
    series: Series = {}
    for family in parse_prometheus(text).values():
        for name, labels, value in family.samples:
            if labels.get("service") == "web" and name.startswith("gitorch_lb_"):
                series[(name, tuple(sorted(labels.items())))] = value
    return series


def value(series: Series, name: str, version: str, **extra: str) -> float:
    found = [
        v
        for (n, labels), v in series.items()
        if n == name
        and dict(labels)["version"] == version
        and all(dict(labels).get(k) == x for k, x in extra.items())
    ]
    assert len(found) == 1, (name, version, extra, found)
    return found[0]


def versions(series: Series) -> dict[str, str]:
    """version -> revision label, of every version in /metrics."""
    return {
        dict(labels)["version"]: dict(labels)["revision"]
        for (n, labels), _ in series.items()
        if n == "gitorch_lb_requests_total"
    }


@pytest.mark.parametrize("plane", ["builtin", "haproxy"])
def test_metrics_and_status_count_requests_per_version(world: World, plane: str) -> None:
    if plane == "haproxy" and shutil.which("haproxy") is None:
        pytest.fail("haproxy is not installed (.ci/run installs it)")
    port = world.port
    make = lambda v, env=None: process_progressive(  # noqa: E731
        "web", port=port, version=v, strategy=CANARY_PAUSED_AT_HALF, env=env
    )
    daemon, sha1 = deploy_first(world, plane, make("1"))
    assert send(port, 30) == {200: 30}
    before = scrape(daemon)
    ((v1, rev1),) = versions(before).items()
    assert rev1 == sha1
    assert value(before, "gitorch_lb_requests_total", v1) == 30

    sha2 = commit_next(world, make("2", {"FAIL_MODE": "errors", "SLOW_MS": "60"}), "2")
    wait_for(
        "the canary paused at 50%",
        lambda: (
            (s := daemon.service("web")) is not None
            and s["rollout"]["phase"] == "Paused"
            and s["rollout"]["weight"] == 50
        ),
        40,
        describe=daemon.log_tail,
    )
    seen = send(port, 40)
    assert set(seen) == {200, 500} and sum(seen.values()) == 40, seen
    during = scrape(daemon)
    (v2,) = set(versions(during)) - {v1}
    assert versions(during)[v2] == sha2
    assert value(during, "gitorch_lb_requests_total", v1) == 30 + seen[200]
    assert value(during, "gitorch_lb_requests_total", v2) == seen[500]
    assert value(during, "gitorch_lb_responses_total", v2, code_class="5xx") == seen[500]
    assert value(during, "gitorch_lb_responses_total", v1, code_class="5xx") == 0
    assert value(during, "gitorch_lb_weight_percent", v2) == 50
    # Every v2 answer took 60 ms or more: none below 50 ms, all by the +Inf bucket.
    hist = "gitorch_lb_request_duration_seconds_bucket"
    assert value(during, hist, v2, le="0.05") == 0
    assert value(during, hist, v2, le="+Inf") == seen[500]
    assert value(during, hist, v1, le="+Inf") == 30 + seen[200]
    for key, old in before.items():
        assert during.get(key, old) >= old or not key[0].endswith(("_total", "_bucket")), key

    # The daemon stores a snapshot every 2 s: status (no daemon asked) shows the counts.
    def stored() -> dict[str, object] | None:
        done = gitorch(
            "status", "web", "--format", "json", "--state", str(world.state), cwd=world.root
        )
        assert done.code == 0, done.stderr
        traffic = done.json()["services"][0]["traffic"]
        by_version = {v["version"]: v for v in traffic["versions"]} if traffic else {}
        if by_version.get(v1, {}).get("requests") != 30 + seen[200]:
            return None
        return by_version

    by_version = wait_for("a snapshot with the requests", stored, 15, interval=0.5)
    assert by_version[v2]["requests"] == by_version[v2]["errors5xx"] == seen[500]
    assert by_version[v2]["successRate"] == 0.0 and by_version[v1]["successRate"] == 1.0
    assert by_version[v2]["p50Ms"] >= 50 and by_version[v1]["weight"] == 50
    text = gitorch("status", "web", "--state", str(world.state), cwd=world.root)
    assert text.code == 0, text.stderr
    assert f"traffic ({plane}, as of " in text.stdout, text.stdout
    rows = {line.split()[0]: line.split() for line in text.stdout.splitlines() if line.strip()}
    assert rows[v1][1] == sha1[:7] and rows[v2][1] == sha2[:7], text.stdout
    assert rows[v1][2] == rows[v2][2] == "50%", text.stdout
    assert rows[v1][4:7] == [str(30 + seen[200]), "0", "100.0%"], text.stdout
    assert rows[v2][4:7] == [str(seen[500]), str(seen[500]), "0.0%"], text.stdout
    # The API's status has the same section, read live.
    live = daemon.service("web")
    assert live is not None and live["traffic"]["ageSeconds"] < 1
    assert {v["version"] for v in live["traffic"]["versions"]} == {v1, v2}

    # Promotion removes v1's replicas: its counts leave the data plane, not /metrics.
    action(daemon, "promote")
    wait_for("v2 everywhere", on_revision(daemon, sha2, 2), 40, describe=daemon.log_tail)
    assert send(port, 5) == {500: 5}
    after = scrape(daemon)
    for key, old in during.items():
        if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
            assert key in after and after[key] >= old, (key, old, after.get(key))
    assert value(after, "gitorch_lb_requests_total", v1) == 30 + seen[200]
    assert value(after, "gitorch_lb_requests_total", v2) == seen[500] + 5
    assert value(after, "gitorch_lb_backends", v1) == 0
    assert value(after, "gitorch_lb_weight_percent", v2) == 100
