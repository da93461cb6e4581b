"""Replicas that cannot start back off like crashes, and say why (issue 12, defect 3):
a command that does not exist was retried ~3 times a second with 372 warnings in 36 s,
status showed "Progressing 0/2" with no error, and validate and plan accepted a service
with only ``image:`` on the process runtime.
"""

from __future__ import annotations

import time

from reconciler_helpers import Cluster, commit, gitorch, process_service, wait_for

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
    assert "restart" in text.stdout


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
