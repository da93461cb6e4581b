"""An invalid commit on top of a good one changes nothing, is reported with file:line by
``gitorch status`` and the API, and a fixing commit clears the error and applies."""

from __future__ import annotations

import time

from reconciler_helpers import (
    Cluster,
    commit,
    converged,
    get_version,
    gitorch,
    instance_ids,
    process_service,
    wait_for,
)


def test_invalid_commit_keeps_the_last_good_state_and_reports_file_line(cluster: Cluster) -> None:
    port = cluster.port
    sha1 = commit(cluster.repo, {"api.yaml": process_service("api", port=port, replicas=2)}, "v1")
    daemon = cluster.daemon()
    wait_for(
        "v1 converged",
        lambda: converged(daemon.service("api"), sha1, 2),
        40,
        describe=daemon.log_tail,
    )
    ids = instance_ids(daemon.service("api"))

    broken = process_service("api", port=port, version="2", replicas=2).replace(
        "  replicas: 2\n", "  replicas: lots\n"
    )
    line = broken.splitlines().index("  replicas: lots") + 1
    sha2 = commit(cluster.repo, {"api.yaml": broken}, "v2, but replicas is not a number")

    def reported() -> str | None:
        error = daemon.status().get("lastError")
        return error if error and sha2[:12] in error else None

    error = wait_for("the invalid commit reported", reported, 15, describe=daemon.log_tail)
    assert f"api.yaml:{line}" in error, error

    status = gitorch("status", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert status.code == 0, status.stderr
    assert f"api.yaml:{line}" in (status.json()["lastError"] or ""), status.json()

    # Nothing changes: same replicas, same revision, still v1, for several passes and polls.
    until = time.monotonic() + 5
    while time.monotonic() < until:
        svc = daemon.service("api")
        assert instance_ids(svc) == ids, svc
        assert svc is not None and svc["revision"] == sha1
        time.sleep(0.3)
    assert get_version(port) == "1"

    sha3 = commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=port, version="2", replicas=2)},
        "v2, fixed",
    )
    wait_for(
        "v2 converged",
        lambda: converged(daemon.service("api"), sha3, 2),
        40,
        describe=daemon.log_tail,
    )
    assert daemon.status()["lastError"] is None, daemon.status()
    status = gitorch("status", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert status.json()["lastError"] is None, status.json()
    assert get_version(port) == "2"
