"""An invalid commit on top of a good one changes nothing, is reported with file:line by
``gitorch status`` and the API, and a fixing commit clears the error and applies."""

from __future__ import annotations

import os
import signal
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

    # History names the rejected commit with its author and why (the auditor's view),
    # once, however many polls met it; the audit log lists every problem.
    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    rejected = [e for e in history.json() if e["revision"] == sha2]
    assert [e["result"] for e in rejected] == ["invalid"], history.json()
    assert f"api.yaml:{line}" in rejected[0]["reason"], rejected
    assert rejected[0]["author"].startswith("Ada Lovelace"), rejected
    assert rejected[0]["trigger"] in ("local commit", "poll"), rejected  # what read it
    text = gitorch("history", *cluster.state_args, cwd=cluster.root)
    row = next(r for r in text.stdout.splitlines() if sha2[:7] in r)
    assert "invalid" in row and f"api.yaml:{line}" in row, text.stdout
    audit = gitorch(
        "audit",
        *cluster.state_args,
        "--kind",
        "revision.invalid",
        "--format",
        "json",
        cwd=cluster.root,
    )
    (event,) = audit.json()
    assert event["revision"] == sha2 and event["actor"].startswith("author:Ada"), event

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


def test_a_daemon_restarted_on_an_invalid_head_goes_on_with_what_it_was_applying(
    cluster: Cluster,
) -> None:
    """Found by the chaos soak (bench/soak.py --state etcd://, seed 9): a daemon killed
    while it applied a valid commit that adds a service, started again on an invalid head,
    went back to the last commit that had *succeeded* and pruned the service it had just
    added (its clients were refused). A daemon that is not restarted keeps applying the
    last valid commit it has; one that restarts must do the same."""
    from listen_ports import free_port

    port, extra_port = cluster.port, free_port()
    sha1 = commit(cluster.repo, {"api.yaml": process_service("api", port=port, replicas=1)}, "v1")
    daemon = cluster.daemon()
    wait_for("v1", lambda: converged(daemon.service("api"), sha1, 1), 40, describe=daemon.log_tail)
    # extra's replica answers at once but is ready only after 30 s: v2 is in progress.
    extra = process_service("extra", port=extra_port, replicas=1, initial_delay=30)
    commit(cluster.repo, {"extra.yaml": extra}, "v2: add extra")
    wait_for(
        "extra's replica started",
        lambda: bool(instance_ids(daemon.service("extra"))),
        30,
        describe=daemon.log_tail,
    )
    ids = instance_ids(daemon.service("extra"))
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(10)
    commit(cluster.repo, {"api.yaml": "kind: Service\nmetadata: {name: api\n"}, "v3: invalid")
    again = cluster.daemon()
    time.sleep(6)  # several passes of the restarted daemon
    svc = again.service("extra")
    assert svc is not None and instance_ids(svc) == ids, again.log_tail()
    assert "going on with the revision it was applying" in again.log_tail(200)
    # The rejected commit is an entry of its own: v2 goes on as the one entry in
    # progress, never recorded a second time behind it.
    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    results = {(e["revision"], e["result"]) for e in history.json()}
    assert [e["result"] for e in history.json()][:2] == ["invalid", "in-progress"], results
    assert len(history.json()) == 3, history.json()
