"""A dead proxy is started again once, however many of the daemon's threads notice at once
(found by the chaos soak, bench/soak.py: after a SIGKILL of the proxy, the pass and the
traffic meter each started one, and the second took over from the first; a real proxy,
started and killed by the test)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from data_plane_helpers import kill_proxy_tree, stop_data_plane
from reconciler_helpers import wait_for

from gitorch.traffic.haproxy.process import process_alive
from gitorch.traffic.proxy import client
from gitorch.traffic.proxy.client import ProxyDataPlane


@pytest.mark.slow
def test_threads_finding_the_proxy_dead_start_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    try:
        plane = ProxyDataPlane(state, workers=1)
        first = kill_proxy_tree(state)  # keeper too: nothing else starts one
        wait_for("the proxy to die", lambda: not process_alive(first), 10)

        launches: list[int] = []
        real_launch = client.launch

        def counted_launch(*args: object, **kwargs: object) -> None:
            launches.append(1)
            real_launch(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(client, "launch", counted_launch)
        start = threading.Barrier(4)
        healthy: list[bool] = []

        def ask() -> None:
            start.wait()
            healthy.append(plane.health().ok)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert healthy == [True] * 4, healthy
        assert len(launches) == 1, f"{len(launches)} proxies started for one that died"
    finally:
        stop_data_plane(state)
