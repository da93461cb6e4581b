"""A RollingUpdate replaces a batch of maxSurge replicas as one wave (issue 20, item 3).

The strategy stops as many old replicas as new ones are available. When the first of a
new pair answered its readiness probe a moment before its partner, the pass it woke
stopped one old replica and started one new one, and the partner's readiness made a
second wave of one: a rollout of 10 replicas with maxSurge 2 took 6-7 waves instead of
5. A pass now holds the answered ones of a batch back until the rest answered, within
``READY_SETTLE`` (gitorch.decide.batch; test_batch_release.py drives single passes). Here the test decides when each new replica becomes ready (a marker
file its health endpoint reads), and the waves are read from the kernel's start times of
the next pair's processes, not from gitorch's records.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest
from marker_app import APP, manifest, ready
from reconciler_helpers import Cluster, commit, converged, wait_for
from replica_procs import ReplicaProc, replica_processes

from gitorch.decide.batch import READY_SETTLE

# The strategy's waves: the store keeps what any pass keeps.
pytestmark = pytest.mark.store_incidental

#: The second of the first new pair becomes ready this much after the first.
STAGGER = 0.2
#: Two replicas whose processes started within this many clock ticks (1/100 s) of each
#: other were started by one pass; a wave of one starts about STAGGER later.
SAME_PASS_TICKS = 12


def new_replicas(cluster: str) -> dict[int, ReplicaProc]:
    """The running replicas of version 2, by slot."""
    return {
        int(p.name.split("-")[-3]): p
        for p in replica_processes(cluster)
        if p.service == "api" and p.env.get("VERSION") == "2"
    }


def answers(replica: ReplicaProc) -> bool:
    """Whether the replica's server listens (whatever its health says)."""
    conn = http.client.HTTPConnection("127.0.0.1", int(replica.env["PORT"]), timeout=1)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status in (200, 503)
    except OSError:
        return False
    finally:
        conn.close()


def test_a_pair_rolls_as_one_wave(cluster: Cluster, tmp_path: Path) -> None:
    assert STAGGER < READY_SETTLE
    app, markers = tmp_path / "app.py", tmp_path / "markers"
    app.write_text(APP)
    markers.mkdir()
    ready(markers, "1", "all")
    sha1 = commit(cluster.repo, {"api.yaml": manifest(cluster.port, "1", app, markers)}, "v1")
    daemon = cluster.daemon()
    wait_for("v1 converged", lambda: converged(daemon.service("api"), sha1, 4), 60)
    name = cluster.cluster_name()
    assert name is not None
    sha2 = commit(cluster.repo, {"api.yaml": manifest(cluster.port, "2", app, markers)}, "v2")
    first = wait_for(
        "the first new pair listening",
        lambda: (
            (found := new_replicas(name)).keys() == {1, 2}
            and all(answers(r) for r in found.values())
            and found
        ),
        60,
        describe=daemon.log_tail,
    )
    ready(markers, "2", 1)
    time.sleep(STAGGER)
    ready(markers, "2", 2)
    wait_for("the second new pair started", lambda: {3, 4} <= new_replicas(name).keys(), 60)
    ready(markers, "2", "all")
    wait_for(
        "v2 converged",
        lambda: converged(daemon.service("api"), sha2, 4),
        60,
        describe=daemon.log_tail,
    )
    ticks = {slot: r.ticks for slot, r in new_replicas(name).items()}
    assert ticks.keys() == {1, 2, 3, 4}, ticks
    assert abs(first[1].ticks - first[2].ticks) <= SAME_PASS_TICKS, first
    assert abs(ticks[3] - ticks[4]) <= SAME_PASS_TICKS, (
        f"slots 3 and 4 started {abs(ticks[3] - ticks[4]) / 100:.2f} s apart: two waves of one",
        ticks,
    )
