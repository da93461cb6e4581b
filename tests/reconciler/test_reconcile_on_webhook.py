"""A signed push webhook makes the daemon fetch and apply at once; an unsigned or wrongly
signed one is refused (401) and changes nothing before the next poll.

The daemon tracks a bare repository by its file:// URL (so no file watcher sees the
commits) and polls only every 60 s: within this test, only the webhook can bring a commit.
"""

from __future__ import annotations

import time

from reconciler_helpers import (
    Cluster,
    commit,
    converged,
    get_version,
    git,
    process_service,
    push,
    signature,
    wait_for,
    webhook_body,
)

SECRET = b"s3cr3t-webhook-key"
#: From the accepted webhook to every replica on the new revision: one fetch, a rolling
#: update of 2 replicas with 1 s probes (typically ~4 s).
LIVE_BOUND = 15.0


def test_signed_webhook_applies_at_once_and_unsigned_changes_nothing(cluster: Cluster) -> None:
    remote = cluster.root / "remote.git"
    git(cluster.root, "init", "-q", "--bare", "-b", "main", str(remote))
    git(cluster.repo, "remote", "add", "origin", remote.as_uri())
    secret_file = cluster.root / "webhook-secret"
    secret_file.write_bytes(SECRET + b"\n")
    port = cluster.port

    sha1 = commit(cluster.repo, {"api.yaml": process_service("api", port=port, replicas=2)}, "v1")
    push(cluster.repo)
    daemon = cluster.daemon(
        repo=remote.as_uri(),
        interval=60,
        extra=["--webhook-secret-file", str(secret_file)],
    )
    wait_for(
        "v1 converged",
        lambda: converged(daemon.service("api"), sha1, 2),
        40,
        describe=daemon.log_tail,
    )

    sha2 = commit(
        cluster.repo, {"api.yaml": process_service("api", port=port, version="2", replicas=2)}, "v2"
    )
    push(cluster.repo)
    body = webhook_body(sha2)
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}

    code, _ = daemon.request("POST", "/api/v1/webhook", body, headers)
    assert code == 401
    wrong = {**headers, "X-Hub-Signature-256": signature(b"not the secret", body)}
    code, _ = daemon.request("POST", "/api/v1/webhook", body, wrong)
    assert code == 401
    # A valid signature of another body does not authorize this one either.
    tampered = {**headers, "X-Hub-Signature-256": signature(SECRET, body + b" ")}
    code, _ = daemon.request("POST", "/api/v1/webhook", body, tampered)
    assert code == 401

    # Many resync passes later, still v1: the refused deliveries triggered no fetch.
    until = time.monotonic() + 4
    while time.monotonic() < until:
        svc = daemon.service("api")
        assert svc is not None and svc["revision"] == sha1, svc
        assert {i["revision"] for i in svc["instances"]} == {sha1}
        time.sleep(0.3)
    assert daemon.status()["tracking"]["revision"] == sha1

    signed = {**headers, "X-Hub-Signature-256": signature(SECRET, body)}
    sent = time.monotonic()
    code, answer = daemon.request("POST", "/api/v1/webhook", body, signed)
    assert code == 202, answer
    wait_for(
        "v2 live after the webhook",
        lambda: converged(daemon.service("api"), sha2, 2),
        LIVE_BOUND,
        interval=0.05,
        describe=daemon.log_tail,
    )
    took = time.monotonic() - sent
    print(f"webhook to v2 converged: {took:.2f}s")
    assert get_version(port) == "2"
