"""``gitorch apply`` exit codes on the process driver (docs: spec/cli.md).

0 converged; 1 for a version that failed and was rolled back; ``--expect-plan`` with a
digest that is not the plan's exits 1 and changes nothing; ``--worktree`` is refused.
"""

from __future__ import annotations

from reconciler_helpers import (
    CliRun,
    Cluster,
    commit,
    gitorch,
    process_runtime,
    process_service,
)

DEADLINE = 6


def _apply(cluster: Cluster, *extra: str) -> CliRun:
    return gitorch(
        "apply",
        "--repo",
        str(cluster.repo),
        *cluster.state_args,
        "--runtime",
        "process",
        "--timeout",
        "60",
        *extra,
        cwd=cluster.root,
    )


def _replicas(cluster: Cluster) -> dict[str, str]:
    """Running replica id -> revision label, straight from the process driver."""
    runtime = process_runtime(cluster.state)
    return {
        i.id: i.labels["dev.gitorch.revision"]
        for i in runtime.list_instances(cluster.cluster_name() or "")
        if i.state.value == "running"
    }


def _status(cluster: Cluster) -> dict[str, object]:
    done = gitorch("status", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert done.code == 0, done.stderr
    return done.json()


def test_apply_exit_codes(cluster: Cluster) -> None:
    port = cluster.port
    sha1 = commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=port, replicas=2, deadline=DEADLINE)},
        "v1",
    )
    done = _apply(cluster)
    assert done.code == 0, done.stdout + done.stderr
    first = _replicas(cluster)
    assert len(first) == 2 and set(first.values()) == {sha1}, first
    # Converged again: nothing to do, still 0, same replicas.
    done = _apply(cluster)
    assert done.code == 0, done.stdout + done.stderr
    assert _replicas(cluster) == first

    bad = process_service(
        "api", port=port, version="2", replicas=2, deadline=DEADLINE, env={"FAIL_MODE": "unhealthy"}
    )
    sha2 = commit(cluster.repo, {"api.yaml": bad}, "v2: never ready")
    done = _apply(cluster)
    assert done.code == 1, done.stdout + done.stderr
    assert "failed" in done.stderr, done.stderr
    assert _replicas(cluster) == first  # rolled back: the v1 replicas, no v2 replica left
    status = _status(cluster)
    svc = status["services"][0]  # type: ignore[index]
    assert svc["rollout"]["phase"] == "RolledBack", svc
    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert history.json()[0]["revision"] == sha2
    assert history.json()[0]["result"] == "rolled-back"

    sha3 = commit(
        cluster.repo,
        {"api.yaml": process_service("api", port=port, version="3", replicas=2, deadline=DEADLINE)},
        "v3",
    )
    plan = gitorch(
        "plan",
        "--repo",
        str(cluster.repo),
        *cluster.state_args,
        "--runtime",
        "process",
        "--format",
        "json",
        cwd=cluster.root,
    )
    assert plan.code == 2, plan.stdout + plan.stderr
    digest = plan.json()["digest"]
    wrong = ("0" if digest[0] != "0" else "1") + digest[1:12]
    done = _apply(cluster, "--expect-plan", wrong)
    assert done.code == 1, done.stdout + done.stderr
    assert "plan changed" in done.stderr, done.stderr
    assert _replicas(cluster) == first  # nothing changed
    history = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert history.json()[0]["revision"] == sha2  # v3 was not even recorded

    # --worktree is refused (apply applies commits only), with or without edits.
    (cluster.repo / "api.yaml").write_text(
        process_service("api", port=port, version="4", replicas=2), encoding="utf-8"
    )
    done = _apply(cluster, "--worktree")
    assert done.code == 1, done.stdout + done.stderr
    assert "commit" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert _replicas(cluster) == first

    # The reviewed plan's own digest is accepted and v3 is applied.
    done = _apply(cluster, "--expect-plan", digest[:12])
    assert done.code == 0, done.stdout + done.stderr
    now = _replicas(cluster)
    assert set(now.values()) == {sha3} and len(now) == 2, now
