"""A RollingUpdate replaces a batch of maxSurge replicas as one wave (issue 20, item 3).

The strategy stops as many old replicas as new ones are available. When the first of a
new pair answered its readiness probe a moment before its partner, the pass it woke
stopped one old replica and started one new one, and the partner's readiness made a
second wave of one: a rollout of 10 replicas with maxSurge 2 took 6-7 waves instead of
5. The daemon now lets such a pass wait (``READY_SETTLE``) for the other replicas the
last pass started. The waves are read from the kernel's start times of the new
replicas' processes, not from gitorch's records.
"""

from __future__ import annotations

import sys

from reconciler_helpers import API_APP, Cluster, commit, converged, process_service, wait_for
from replica_procs import replica_processes

from gitorch.daemon import READY_SETTLE

#: A replica of an even slot answers its readiness probe this much later than the odd
#: one started with it (well within READY_SETTLE; a pass observes in milliseconds here).
STAGGER = 0.2
#: Two replicas whose processes started within this many clock ticks (1/100 s) of each
#: other were started by one pass; a wave of one starts at least STAGGER later.
SAME_PASS_TICKS = 8

STRATEGY = """\
  strategy:
    type: RollingUpdate
    progressDeadlineSeconds: 60
    rollingUpdate: {maxSurge: 2, maxUnavailable: 0}
"""


def staggered(port: int, version: str) -> str:
    # The slot is the third field from the end of the replica's name.
    script = (
        "slot=$(echo \"$GITORCH_REPLICA\" | awk -F- '{print $(NF-2)}'); "
        f"case $slot in *[02468]) sleep {STAGGER};; esac; "
        f'exec "{sys.executable}" "{API_APP}"'
    )
    return process_service(
        "api",
        port=port,
        version=version,
        replicas=4,
        command=["sh", "-c", script],
        strategy=STRATEGY,
    )


def test_a_pair_rolls_as_one_wave(cluster: Cluster) -> None:
    assert STAGGER < READY_SETTLE
    sha1 = commit(cluster.repo, {"api.yaml": staggered(cluster.port, "1")}, "v1")
    daemon = cluster.daemon()
    wait_for("v1 converged", lambda: converged(daemon.service("api"), sha1, 4), 60)
    name = cluster.cluster_name()
    assert name is not None
    sha2 = commit(cluster.repo, {"api.yaml": staggered(cluster.port, "2")}, "v2")
    wait_for(
        "v2 converged",
        lambda: converged(daemon.service("api"), sha2, 4),
        60,
        describe=daemon.log_tail,
    )
    new = sorted(
        (int(p.name.split("-")[-3]), p.ticks)
        for p in replica_processes(name)
        if p.service == "api" and p.env.get("VERSION") == "2"
    )
    assert [slot for slot, _ in new] == [1, 2, 3, 4], new
    ticks = dict(new)
    # Slots 1 and 2 start in the commit's pass; 3 and 4 in the pass their readiness woke.
    assert abs(ticks[1] - ticks[2]) <= SAME_PASS_TICKS, new
    assert abs(ticks[3] - ticks[4]) <= SAME_PASS_TICKS, (
        f"slots 3 and 4 started {abs(ticks[3] - ticks[4]) / 100:.2f} s apart: two waves of one",
        new,
    )
    assert ticks[3] - ticks[2] > SAME_PASS_TICKS, new
