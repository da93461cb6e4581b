"""The mass-prune guard (issue 12, defect 9: a commit that deletes every manifest, or most
of them, validated and pruned the whole cluster).

Such a revision is refused: the last good state keeps running, status and history say
why; ``--allow-mass-prune`` lets it through.
"""

from __future__ import annotations

import time

from listen_ports import free_port
from reconciler_helpers import Cluster, commit, converged, gitorch, process_service, wait_for


def test_a_commit_removing_most_services_is_refused(cluster: Cluster) -> None:
    ports = [cluster.port, free_port(), free_port()]
    names = ["api", "web", "cache"]
    first = commit(
        cluster.repo,
        {
            f"{n}.yaml": process_service(n, port=p, replicas=1)
            for n, p in zip(names, ports, strict=True)
        },
        "three services",
    )
    daemon = cluster.daemon()
    for name in names:
        wait_for(f"{name} up", lambda n=name: converged(daemon.service(n), first, 1), 60)
    before = {i["id"] for n in names for i in daemon.service(n)["instances"]}

    gone = commit(cluster.repo, {"web.yaml": None, "cache.yaml": None}, "oops: two of three")
    wait_for(
        "the refusal reported",
        lambda: "refused" in str(daemon.status().get("lastError") or ""),
        20,
        describe=daemon.log_tail,
    )
    time.sleep(2.0)  # several passes: nothing is pruned
    after = {i["id"] for n in names for i in (daemon.service(n) or {"instances": []})["instances"]}
    assert after == before
    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    entry = next(e for e in history.json() if e["revision"] == gone)
    assert entry["result"] == "refused" and "remove 2 of 3" in entry["reason"], entry

    daemon.stop()
    allowed = cluster.daemon(extra=["--allow-mass-prune"])
    wait_for(
        "pruned once allowed",
        lambda: (
            allowed.service("api") is not None
            and allowed.service("web") is None
            and allowed.service("cache") is None
        ),
        40,
        describe=allowed.log_tail,
    )
    wait_for("api still up", lambda: converged(allowed.service("api"), first, 1), 20)
