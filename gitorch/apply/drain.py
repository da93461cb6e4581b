"""Waiting for a data plane to finish the requests in flight to backends that leave:
the executor's drain before it stops a replica, and a follower's before it acknowledges
a table (apply/followers.py). A room of its own so that a follower outside the daemon
(apply/standin.py) does not import the executor."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from gitorch.errors import GitorchError
from gitorch.traffic.table import DataPlane

#: How often a drain re-reads a leaving backend's requests in flight.
DRAIN_POLL = 0.05


def wait_drained(
    plane: DataPlane,
    backends: Iterable[tuple[str, str]],
    deadline: float,
    monotonic: Callable[[], float] = time.monotonic,
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Wait until ``plane`` has no request in flight to any of ``backends`` (route,
    backend id), until ``deadline`` (on ``monotonic``) or until ``stopped()``."""
    for route, backend_id in backends:
        while monotonic() < deadline and not stopped():
            try:
                stats = plane.backend_stats(route, backend_id)
            except GitorchError:
                break  # the data plane cannot say: the grace period still protects
            if stats is None or stats.in_flight == 0:
                break
            time.sleep(DRAIN_POLL)
