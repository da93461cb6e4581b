"""Replicas that cannot start back off like crashes, and say why (issue 12, defect 3):
a command that does not exist was retried ~3 times a second with 372 warnings in 36 s,
status showed "Progressing 0/2" with no error, and validate and plan accepted a service
with only ``image:`` on the process runtime.
"""

from __future__ import annotations

import time

from reconciler_helpers import (
    Cluster,
    commit,
    converged,
    get_version,
    gitorch,
    process_service,
    wait_for,
)

#: How long the broken service is watched.
WATCH_SECONDS = 8.0
#: Start attempts per slot in that window with back-off 1, 2, 4 s: at t = 0, 1, 3, 7 s.
#: Two slots, and a little slack for passes that straddle an expiry.
MAX_ATTEMPT_LINES = 2 * 5


def _missing_command_yaml() -> str:
    return """apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: ghost
spec:
  command: ["/nonexistent/bin/x"]
  replicas: 2
"""


def test_a_command_that_does_not_exist_backs_off_and_says_why(cluster: Cluster) -> None:
    commit(
        cluster.repo,
        {
            "ghost.yaml": _missing_command_yaml(),
            "api.yaml": process_service("api", port=cluster.port, replicas=1),
        },
        "a service whose command does not exist",
    )
    daemon = cluster.daemon(resync=0.2)
    wait_for(
        "ghost in back-off with a reason",
        lambda: any(
            "nonexistent" in str(b.get("lastCause"))
            for b in (daemon.service("ghost") or {}).get("backoff", [])
        ),
        20,
        describe=daemon.log_tail,
    )
    started = time.monotonic()
    time.sleep(WATCH_SECONDS)
    log = daemon.log_path.read_text(encoding="utf-8", errors="replace")
    attempts = [line for line in log.splitlines() if "ghost-" in line and "cannot start" in line]
    assert 2 <= len(attempts) <= MAX_ATTEMPT_LINES + int(time.monotonic() - started), (
        f"{len(attempts)} start-failure lines in {WATCH_SECONDS:g}s:\n" + "\n".join(attempts)
    )
    # The other service is unaffected.
    assert (daemon.service("api") or {})["rollout"]["phase"] == "Healthy"
    # Text status shows the back-off and why.
    text = gitorch("status", *cluster.state_args, cwd=cluster.root)
    assert "ghost-1" in text.stdout and "nonexistent" in text.stdout, text.stdout + text.stderr
    assert "failed start(s)" in text.stdout and "restart" not in text.stdout, text.stdout


def test_an_image_only_service_is_unschedulable_on_process_nodes(cluster: Cluster) -> None:
    (cluster.repo / "web.yaml").write_text(
        """apiVersion: gitorch.dev/v1
kind: Service
metadata:
  name: web
spec:
  image: gitorch-example/web:1
  replicas: 1
""",
        encoding="utf-8",
    )
    done = gitorch(
        "plan",
        "--worktree",
        "--repo",
        str(cluster.repo),
        "--runtime",
        "process",
        *cluster.state_args,
        cwd=cluster.root,
    )
    out = done.stdout + done.stderr
    assert "cannot be placed" in out or "Unschedulable" in out, out
    assert "driver process cannot run it" in out, out


def test_a_version_that_cannot_start_holds_one_surge_slot(cluster: Cluster) -> None:
    """With maxSurge 1, a new version whose command does not exist is tried in one slot at
    a time: the failed slot backs off and keeps its place under maxSurge, so the rollout
    waits on it (the progress deadline decides) while the old replicas serve. Before,
    each failed start freed room for the next slot: api-1, api-2 and api-3 were all tried
    within a second. Status says failed starts, not restarts of the replicas that run."""
    port = cluster.port
    sha1 = commit(cluster.repo, {"api.yaml": process_service("api", port=port)}, "v1")
    daemon = cluster.daemon(resync=0.2)
    wait_for("v1 converged", lambda: converged(daemon.service("api"), sha1, 3), 60)
    broken = process_service("api", port=port, version="2", command=["/nonexistent/bin/x"])
    commit(cluster.repo, {"api.yaml": broken}, "v2 cannot start")
    wait_for(
        "api-1 of v2 in back-off",
        lambda: any(b["failedStarts"] for b in (daemon.service("api") or {}).get("backoff", [])),
        20,
        describe=daemon.log_tail,
    )
    served: list[str | None] = []
    until = time.monotonic() + WATCH_SECONDS
    while time.monotonic() < until:  # well within the deadline (60 s): no rollback yet
        served.append(get_version(port))
        time.sleep(0.2)
    log = daemon.log_path.read_text(encoding="utf-8", errors="replace")
    attempts = [line for line in log.splitlines() if "cannot start" in line]
    tried = {slot for slot in ("api-1", "api-2", "api-3") if any(slot in a for a in attempts)}
    assert tried == {"api-1"}, "\n".join(attempts)
    assert len(attempts) >= 2, "\n".join(attempts)  # it does retry, with back-off
    assert served and set(served) == {"1"}, served  # the old replicas serve throughout
    svc = daemon.service("api") or {}
    assert svc["rollout"]["phase"] == "Progressing", svc["rollout"]
    old = [i for i in svc["instances"] if i["revision"] == sha1]
    assert len(old) == 3 and all(i["ready"] and i["restarts"] == 0 for i in old), old
    (entry,) = svc["backoff"]
    assert entry["replica"] == "api-1" and entry["restarts"] == 0, entry
    assert entry["failedStarts"] >= 2 and svc["restarts"] == 0, svc
    text = gitorch("status", *cluster.state_args, cwd=cluster.root).stdout
    line = next(line for line in text.splitlines() if line.startswith("api-1:"))
    assert "failed start(s), last: start failed:" in line and "nonexistent" in line, text
    assert "restart(s)" not in text and "why they exited" not in text, text
