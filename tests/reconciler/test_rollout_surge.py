"""A RollingUpdate never runs more than ``replicas + maxSurge`` replicas, not even for a
moment (found by the chaos soak, bench/soak.py).

At the ceiling the strategy stops an old replica and starts a new one in the same pass,
counting the room the stop makes; the executor used to start the new replica before it
drained the old one, so for the length of the drain the service ran one replica more
than maxSurge allows (4 of ``replicas: 2, maxSurge: 1``). The processes are counted from
/proc every few milliseconds during the rollout, not from gitorch's own records.
"""

from __future__ import annotations

import threading
import time

from reconciler_helpers import (
    Cluster,
    LoadClient,
    commit,
    converged,
    process_service,
    wait_for,
)
from replica_procs import replica_processes


def test_rolling_update_stays_within_max_surge(cluster: Cluster) -> None:
    port = cluster.port
    sha1 = commit(cluster.repo, {"api.yaml": process_service("api", port=port, replicas=2)}, "v1")
    daemon = cluster.daemon()
    wait_for("v1 converged", lambda: converged(daemon.service("api"), sha1, 2), 60)
    name = cluster.cluster_name()
    assert name is not None

    most = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, sum(1 for r in replica_processes(name) if r.service == "api"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # Under load, so that every drain waits for requests in flight.
        with LoadClient(port, threads=4) as load:
            for version in ("2", "3"):
                sha = commit(
                    cluster.repo,
                    {"api.yaml": process_service("api", port=port, replicas=2, version=version)},
                    f"v{version}",
                )
                wait_for(
                    f"v{version} converged",
                    lambda sha=sha: converged(daemon.service("api"), sha, 2),
                    60,
                    describe=daemon.log_tail,
                )
    finally:
        stop.set()
        sampler.join(5)
    assert load.failures == [], load.failures[:5]
    assert most == 3, f"api ran {most} replicas at once; replicas 2 + maxSurge 1 allow 3"
