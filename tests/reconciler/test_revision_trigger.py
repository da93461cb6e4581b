"""A revision's history says what made gitorch read its commit (issue 22, item 7): the
daemon's start, a poll, a local commit, a webhook (with the forge's delivery id), an API
request, or `gitorch apply`. And a webhook ping is logged at info level.

Real daemons on real repositories: a bare remote tracked by its file:// URL (no watcher
sees its commits, so with a 60 s poll only the webhook or the API can bring one), a local
checkout (the watcher), and a short poll.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reconciler_helpers import (
    Cluster,
    DaemonProc,
    commit,
    converged,
    git,
    gitorch,
    process_service,
    push,
    signature,
    wait_for,
    webhook_body,
)

SECRET = b"trigger-test-secret"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def history(cluster: Cluster) -> list[dict[str, Any]]:
    done = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert done.code == 0, done.stderr
    entries = done.json()
    assert isinstance(entries, list)
    return entries


def triggers(cluster: Cluster) -> dict[str, str]:
    return {entry["revision"]: entry["trigger"] for entry in history(cluster)}


def converge(daemon: DaemonProc, sha: str) -> None:
    wait_for(
        f"{sha[:12]} converged",
        lambda: converged(daemon.service("api"), sha, 1),
        40,
        describe=daemon.log_tail,
    )


def bare_remote(cluster: Cluster) -> Path:
    remote = cluster.root / "remote.git"
    git(cluster.root, "init", "-q", "--bare", "-b", "main", str(remote))
    git(cluster.repo, "remote", "add", "origin", remote.as_uri())
    return remote


def log_records(daemon: DaemonProc) -> list[dict[str, Any]]:
    records = []
    for line in daemon.log_path.read_text(encoding="utf-8").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_daemon_start_webhook_with_its_delivery_and_api_request(cluster: Cluster) -> None:
    remote = bare_remote(cluster)
    secret_file = cluster.root / "webhook-secret"
    secret_file.write_bytes(SECRET)
    port = cluster.port
    sha1 = commit(cluster.repo, {"api.yaml": process_service("api", port=port, replicas=1)}, "v1")
    push(cluster.repo)
    daemon = cluster.daemon(
        repo=remote.as_uri(),
        interval=60,
        extra=["--webhook-secret-file", str(secret_file), "--log-format", "json"],
    )
    converge(daemon, sha1)

    # A ping (sent by the forge when the webhook is set up): answered and logged at info.
    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 7}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "ping-delivery-1",
        "X-Hub-Signature-256": signature(SECRET, ping),
    }
    assert daemon.request("POST", "/api/v1/webhook", ping, headers)[0] == 200
    wait_for(
        "the ping in the log",
        lambda: any(r.get("msg") == "webhook ping answered" for r in log_records(daemon)),
        10,
        describe=daemon.log_tail,
    )
    (logged,) = [r for r in log_records(daemon) if r.get("msg") == "webhook ping answered"]
    assert logged["level"] == "info" and logged["delivery"] == "ping-delivery-1"

    sha2 = commit(
        cluster.repo, {"api.yaml": process_service("api", port=port, version="2", replicas=1)}, "v2"
    )
    push(cluster.repo)
    body = webhook_body(sha2)
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": DELIVERY,
        "X-Hub-Signature-256": signature(SECRET, body),
    }
    assert daemon.request("POST", "/api/v1/webhook", body, headers)[0] == 202
    converge(daemon, sha2)

    sha3 = commit(
        cluster.repo, {"api.yaml": process_service("api", port=port, version="3", replicas=1)}, "v3"
    )
    push(cluster.repo)
    reason = json.dumps({"reason": "deploy button"}).encode()
    assert daemon.request("POST", "/api/v1/reconcile", reason)[0] == 202
    converge(daemon, sha3)

    assert triggers(cluster) == {
        sha1: "daemon start",
        sha2: f"webhook push refs/heads/main {sha2[:12]} (delivery {DELIVERY})",
        sha3: "api request: deploy button",
    }
    # The API serves the same field, and the table shows it.
    code, served = daemon.request("GET", "/api/v1/history")
    assert code == 200 and [e["trigger"] for e in served][:2] == [
        "api request: deploy button",
        f"webhook push refs/heads/main {sha2[:12]} (delivery {DELIVERY})",
    ]
    table = gitorch("history", *cluster.state_args, cwd=cluster.root)
    assert "TRIGGER" in table.stdout.splitlines()[0]
    assert f"(delivery {DELIVERY})" in table.stdout


def test_local_commit(cluster: Cluster) -> None:
    port = cluster.port
    sha1 = commit(cluster.repo, {"api.yaml": process_service("api", port=port, replicas=1)}, "v1")
    daemon = cluster.daemon(interval=60)  # the checkout itself: the watcher sees commits
    converge(daemon, sha1)
    sha2 = commit(
        cluster.repo, {"api.yaml": process_service("api", port=port, version="2", replicas=1)}, "v2"
    )
    converge(daemon, sha2)
    assert triggers(cluster) == {sha1: "daemon start", sha2: "local commit"}


def test_poll_and_cli_apply(cluster: Cluster) -> None:
    remote = bare_remote(cluster)
    port = cluster.port
    sha1 = commit(cluster.repo, {"api.yaml": process_service("api", port=port, replicas=1)}, "v1")
    push(cluster.repo)
    applied = gitorch(
        "apply",
        "--repo",
        remote.as_uri(),
        *cluster.state_args,
        "--runtime",
        "process",
        cwd=cluster.root,
    )
    assert applied.code == 0, applied.stderr
    assert triggers(cluster) == {sha1: "cli apply"}

    daemon = cluster.daemon(repo=remote.as_uri(), interval=1)
    # The daemon has read the remote before v2 lands there: v2 then comes by a poll (a
    # daemon that first fetched after the push would find it at its start, rightly).
    converge(daemon, sha1)
    sha2 = commit(
        cluster.repo, {"api.yaml": process_service("api", port=port, version="2", replicas=1)}, "v2"
    )
    push(cluster.repo)
    converge(daemon, sha2)
    assert triggers(cluster)[sha2] == "poll"
