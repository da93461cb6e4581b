"""The CLI contract's ``--server URL`` ("instead of --state: ask a running daemon") for
``plan``, ``nodes``, ``volumes`` and ``audit``: what the daemon answers is what the command shows on
the daemon's own host. A pull request's check, or an operator's laptop, then needs
neither the state store nor the nodes."""

from __future__ import annotations

from audit_tamper_helpers import tamper_for
from reconciler_helpers import (
    Cluster,
    commit,
    converged,
    git,
    gitorch,
    process_service,
    wait_for,
)


def test_a_daemon_plans_a_branch_as_the_cli_does(cluster: Cluster) -> None:
    port = cluster.port

    def manifest(version: str, replicas: int = 2) -> dict[str, str]:
        return {"api.yaml": process_service("api", port=port, version=version, replicas=replicas)}

    applied = commit(cluster.repo, manifest("1"), "v1")
    # Two pull requests' branches, never merged: a new version on three replicas, and a typo.
    git(cluster.repo, "checkout", "-q", "-b", "feature")
    feature = commit(cluster.repo, manifest("2", replicas=3), "v2 on three replicas")
    git(cluster.repo, "checkout", "-q", "-b", "broken", "main")
    valid = manifest("3")["api.yaml"]
    commit(cluster.repo, {"api.yaml": valid + "  replica: 4\n"}, "a typo")
    typo_line = valid.count("\n") + 1
    git(cluster.repo, "checkout", "-q", "main")
    daemon = cluster.daemon()
    wait_for("v1 applied", lambda: converged(daemon.service("api"), applied, 2), 60,
             describe=daemon.log_tail)  # fmt: skip
    server = ["--server", f"http://127.0.0.1:{daemon.port}"]

    text = gitorch("plan", *server, "--ref", "feature", cwd=cluster.root)
    assert text.code == 2, text.stderr
    assert f"gitorch plan: revision {feature[:7]}, applied now: {applied[:7]}" in text.stdout
    assert '~ spec.env.VERSION: "1" -> "2"' in text.stdout
    assert "~ spec.replicas: 2 -> 3" in text.stdout
    node = daemon.service("api")["instances"][0]["node"]  # type: ignore[index]
    assert f"api-3 -> {node}" in text.stdout, text.stdout  # where the new replica lands
    assert "\x1b[" not in text.stdout

    # The JSON is the plan the CLI makes on this host (same digest: same next pass).
    remote = gitorch("plan", *server, "--ref", "feature", "--format", "json", cwd=cluster.root)
    local = gitorch(
        "plan", "--repo", str(cluster.repo), "--ref", "feature", *cluster.state_args,
        "--runtime", "process", "--format", "json", cwd=cluster.root,
    )  # fmt: skip
    assert (remote.code, local.code) == (2, 2), (remote.stderr, local.stderr)
    assert remote.stdout == local.stdout
    assert remote.json()["revision"] == feature

    markdown = gitorch(
        "plan", *server, "--ref", "feature", "--format", "markdown", cwd=cluster.root
    )
    assert markdown.code == 2, markdown.stderr
    assert f"### gitorch plan for `{feature[:7]}`" in markdown.stdout
    assert f"Plan digest: `{remote.json()['digest']}`" in markdown.stdout

    # What runs: nothing to do, exit 0.
    same = gitorch("plan", *server, "--ref", applied, cwd=cluster.root)
    assert same.code == 0, same.stdout + same.stderr

    # Errors are one clear line, with every manifest problem as path:line:column.
    typo = gitorch("plan", *server, "--ref", "broken", cwd=cluster.root)
    assert typo.code == 1 and typo.stdout == ""
    assert "answered 422: 1 problem in the manifests" in typo.stderr
    assert f"api.yaml:{typo_line}:3: spec.replica: unknown field 'replica'" in typo.stderr
    unknown = gitorch("plan", *server, "--ref", "nope", cwd=cluster.root)
    assert unknown.code == 1 and "answered 400" in unknown.stderr and "nope" in unknown.stderr
    assert "as of its last fetch" in unknown.stderr
    assert "Traceback" not in typo.stderr + unknown.stderr
    local_only = gitorch("plan", *server, "--worktree", "--path", "x", cwd=cluster.root)
    assert local_only.code == 1
    assert "--path, --worktree cannot be used with --server" in local_only.stderr
    # Nothing of it was applied.
    assert converged(daemon.service("api"), applied, 2)


VOLUME = """\
apiVersion: gitorch.dev/v1
kind: Volume
metadata: {name: data}
spec: {size: 64Mi, accessMode: ReadWriteOnce, reclaimPolicy: Retain}
"""


def test_nodes_and_volumes_from_a_daemon_are_what_its_host_shows(cluster: Cluster) -> None:
    applied = commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=cluster.port, replicas=2), "data.yaml": VOLUME},
        "v1 and a volume",
    )
    daemon = cluster.daemon()
    wait_for("v1 applied", lambda: converged(daemon.service("api"), applied, 2), 60,
             describe=daemon.log_tail)  # fmt: skip
    server = ["--server", f"http://127.0.0.1:{daemon.port}"]
    local = [*cluster.state_args, "--runtime", "process"]

    for command in ("nodes", "volumes"):
        remote = gitorch(command, *server, "--format", "json", cwd=cluster.root)
        here = gitorch(command, *local, "--format", "json", cwd=cluster.root)
        assert (remote.code, here.code) == (0, 0), (remote.stderr, here.stderr)
        assert remote.json() == here.json(), command
        text = gitorch(command, *server, cwd=cluster.root)
        assert text.code == 0, text.stderr
        assert text.stdout == gitorch(command, *local, cwd=cluster.root).stdout
    [node] = gitorch("nodes", *server, "--format", "json", cwd=cluster.root).json()["nodes"]
    assert node["replicas"] == 2 and node["condition"] == "Ready"
    [volume] = gitorch("volumes", *server, "--format", "json", cwd=cluster.root).json()["volumes"]
    assert volume["name"] == "data"

    refused = gitorch("volumes", *server, "--reset", "data", cwd=cluster.root)
    assert refused.code == 1 and "--reset cannot be used with --server" in refused.stderr
    gone = gitorch("nodes", "--server", "http://127.0.0.1:9", cwd=cluster.root)
    assert gone.code == 1
    assert gone.stderr.startswith("error: cannot reach the gitorch daemon at http://127.0.0.1:9")


def test_the_audit_log_from_a_daemon_and_its_chain_verified_here(cluster: Cluster) -> None:
    """An auditor without the store: the entries and their filters as on the daemon's
    host, and ``--verify`` checking the chain the daemon sends, on the auditor's side (an
    edit of the store is named; the head kept earlier is checked with ``--expect``)."""
    first = commit(
        cluster.repo, {"api.yaml": process_service("api", port=cluster.port, replicas=1)}, "v1"
    )
    daemon = cluster.daemon()
    wait_for("v1 applied", lambda: converged(daemon.service("api"), first, 1), 60,
             describe=daemon.log_tail)  # fmt: skip
    server = ["--server", f"http://127.0.0.1:{daemon.port}"]

    for query in ([], ["--service", "api"], ["--kind", "revision.started"], ["--since", "1h"],
                  ["--limit", "2"], ["--limit", "0"]):  # fmt: skip
        remote = gitorch("audit", *server, *query, "--format", "json", cwd=cluster.root)
        here = gitorch("audit", *cluster.state_args, *query, "--format", "json", cwd=cluster.root)
        assert (remote.code, here.code) == (0, 0), (query, remote.stderr, here.stderr)
        assert remote.json() == here.json(), query
    entries = gitorch("audit", *server, "--format", "json", cwd=cluster.root).json()
    assert any(e["kind"] == "revision.started" and e["revision"] == first for e in entries)
    table = gitorch("audit", *server, cwd=cluster.root)
    assert table.code == 0 and "revision.started" in table.stdout

    head = gitorch("audit", *server, "--head", cwd=cluster.root)
    assert head.code == 0, head.stderr
    assert head.stdout == gitorch("audit", *cluster.state_args, "--head", cwd=cluster.root).stdout
    intact = gitorch(
        "audit", *server, "--verify", "--expect", head.stdout.strip(), cwd=cluster.root
    )
    assert intact.code == 0 and "audit log intact" in intact.stdout, intact.stdout + intact.stderr

    # Someone with write access to the store rewrites who did the first entry.
    tamper_for(cluster.store_location).edit(1, actor="user:nobody@nowhere")
    tampered = gitorch("audit", *server, "--verify", "--format", "json", cwd=cluster.root)
    assert tampered.code == 1, tampered.stderr
    verdict = tampered.json()
    assert verdict["intact"] is False and any(p["entry"] == 1 for p in verdict["problems"])
