"""`gitorch apply` and NodePools, as a user runs it: a one-shot apply makes no node (node
pools act in the daemon alone, which also drains and deletes them later) and says so,
naming the pool whose node would take each waiting replica; `gitorch plan` says the same
before anything ran. A real repo, the CLI as a subprocess, process replicas."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import commit, gitorch, init_repo
from provider_helpers import fixed_endpoint_provider

NODE = """\
apiVersion: gitorch.dev/v1
kind: Node
metadata: {name: local}
spec:
  runtime: {driver: process}
  capacity: {cpu: "1", memory: 1Gi}
"""

WEB = """\
apiVersion: gitorch.dev/v1
kind: Service
metadata: {name: web}
spec:
  image: gitorch-example/api:1
  command: ["/bin/sleep", "600"]
  replicas: 2
  resources: {requests: {cpu: 600m, memory: 16Mi}}
"""


def pool(command: list[str]) -> str:
    return f"""\
apiVersion: gitorch.dev/v1
kind: NodePool
metadata: {{name: workers}}
spec:
  maxNodes: 2
  template:
    capacity: {{cpu: "1", memory: 1Gi}}
  provider: {{command: {json.dumps(command)}}}
"""


def _web_leaves(tmp_path: Path, repo: Path) -> None:
    """web leaves Git and is pruned: its process replicas stop."""
    (repo / "web.yaml").unlink()
    commit(repo, {}, "web leaves")
    gone = gitorch(tmp_path, "apply", "--repo", str(repo), "--timeout", "60s",
                   "--allow-mass-prune", timeout=120)  # fmt: skip
    assert gone.returncode == 0, gone.stderr


def test_apply_makes_no_pool_node_and_says_only_the_daemon_does(tmp_path: Path) -> None:
    """web-1 takes 600m of local's one cpu; web-2 fits no node, a workers node would
    take it. plan warns so on a fresh state; apply starts web-1, says at once that
    web-2 waits for a node only `gitorch daemon` makes, never calls the provider, and
    its failure names the pool."""
    command = fixed_endpoint_provider(tmp_path, "tcp://127.0.0.1:1")
    repo = init_repo(tmp_path / "repo")
    commit(repo, {"node.yaml": NODE, "pool.yaml": pool(command), "web.yaml": WEB})
    try:
        plan = gitorch(tmp_path, "plan", "--repo", str(repo), "--format", "json")
        assert plan.returncode == 2, plan.stderr  # changes to apply
        assert (
            "web-2 fits no node now; a node of NodePool workers would take it (`gitorch daemon` "
            "makes one once it waited 10s; `gitorch apply` makes none)"
        ) in json.loads(plan.stdout)["warnings"]

        done = gitorch(tmp_path, "apply", "--repo", str(repo), "--timeout", "3s", timeout=120)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert (
            "note: web-2 fits no node; a node of NodePool workers would take it, but node "
            "pools make nodes in `gitorch daemon` only: `gitorch apply` makes none, and waits"
        ) in done.stderr, done.stderr
        assert "✗ not converged after 3s" in done.stderr
        assert (
            "web-2 waits for a node of NodePool workers, which `gitorch apply` does not "
            "make: run `gitorch daemon`"
        ) in done.stderr
        assert not (tmp_path / "verbs").exists(), "apply called the provider"
        status = gitorch(tmp_path, "status", "--format", "json")
        pools = json.loads(status.stdout).get("nodePools") or []
        assert [(p["name"], p["nodes"]) for p in pools] in ([], [("workers", [])]), pools
    finally:
        _web_leaves(tmp_path, repo)


def test_a_commit_that_only_changes_a_node_pool_is_not_no_changes(tmp_path: Path) -> None:
    """A revision whose only change creates, changes or deletes a NodePool is applied
    (the pool's record follows Git): history says ``succeeded`` and names the pool, never
    ``no-changes``; a commit that changes nothing applied stays ``no-changes``."""
    command = fixed_endpoint_provider(tmp_path, "tcp://127.0.0.1:1")
    repo = init_repo(tmp_path / "repo")

    def apply() -> None:
        done = gitorch(tmp_path, "apply", "--repo", str(repo), "--timeout", "30s", timeout=120)
        assert done.returncode == 0, (done.stdout, done.stderr)

    try:
        commit(repo, {"node.yaml": NODE, "web.yaml": WEB.replace("replicas: 2", "replicas: 1")})
        apply()
        created = commit(repo, {"pool.yaml": pool(command)}, "a pool")
        apply()
        changed = commit(repo, {"pool.yaml": pool(command).replace("maxNodes: 2", "maxNodes: 3")})
        apply()
        (repo / "pool.yaml").unlink()
        deleted = commit(repo, {}, "no pool")
        apply()
        nothing = commit(repo, {"README.md": "notes\n"}, "docs only")
        apply()
        history = gitorch(tmp_path, "history", "--format", "json")
        assert history.returncode == 0, history.stderr
        results = {e["revision"]: e for e in json.loads(history.stdout)}
        for sha in (created, changed, deleted):
            assert results[sha]["result"] == "succeeded", results[sha]
            assert "NodePool/workers" in results[sha]["reason"], results[sha]
        assert results[nothing]["result"] == "no-changes", results[nothing]
    finally:
        _web_leaves(tmp_path, repo)
