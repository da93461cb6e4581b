"""A Node deleted from Git is drained, not abandoned: its replicas move to the nodes
that remain (or are pruned with their services), and the node is forgotten once empty.
Before, the pass stopped observing it at once and its replicas ran on untracked: a
Docker shop torn down with an empty repo kept all its containers. Process replicas on
two process Nodes of this host; `gitorch plan`, `apply`, `status` and `nodes` as a user
runs them."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import commit, gitorch, init_repo

NODE = """\
apiVersion: gitorch.dev/v1
kind: Node
metadata: {{name: {name}}}
spec:
  runtime: {{driver: process}}
  capacity: {{cpu: "1", memory: 1Gi}}
"""

WEB = """\
apiVersion: gitorch.dev/v1
kind: Service
metadata: {name: web}
spec:
  image: gitorch-example/api:1
  command: ["/bin/sleep", "600"]
  replicas: 2
  resources: {requests: {cpu: 400m, memory: 16Mi}}
"""


def alive(instance_id: str) -> bool:
    """Whether the replica's process (pid and start time, as its id says) still runs. A
    zombie is dead: the apply that started it has exited, and the machine's init reaps
    orphans when it gets to them."""
    pid, start_ticks = instance_id.split("-")
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] not in ("Z", "X") and fields[19] == start_ticks


def placed(tmp_path: Path) -> dict[str, str]:
    """web's replicas: instance id -> node."""
    status = gitorch(tmp_path, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    services = {s["name"]: s for s in json.loads(status.stdout)["services"]}
    return {i["id"]: i["node"] for i in services["web"]["instances"]} if "web" in services else {}


def nodes(tmp_path: Path) -> list[str]:
    listed = gitorch(tmp_path, "nodes", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    return sorted(n["name"] for n in json.loads(listed.stdout)["nodes"])


def apply(tmp_path: Path, repo: Path, *flags: str) -> None:
    done = gitorch(tmp_path, "apply", "--repo", str(repo), "--timeout", "60s", *flags, timeout=120)
    assert done.returncode == 0, (done.stdout, done.stderr)


def test_a_deleted_node_is_drained_then_forgotten_and_an_empty_repo_leaves_nothing(
    tmp_path: Path,
) -> None:
    repo = init_repo(tmp_path / "repo")
    commit(
        repo, {"a.yaml": NODE.format(name="a"), "b.yaml": NODE.format(name="b"), "web.yaml": WEB}
    )
    apply(tmp_path, repo)
    before = placed(tmp_path)
    assert sorted(before.values()) == ["a", "b"], before  # spread: one on each
    on_b = next(i for i, node in before.items() if node == "b")

    (repo / "b.yaml").unlink()
    commit(repo, {}, "node b leaves")
    plan = gitorch(tmp_path, "plan", "--repo", str(repo), "--format", "json")
    assert plan.returncode == 2, plan.stderr
    assert "b" in json.dumps(json.loads(plan.stdout)["actions"]), plan.stdout  # the drain shows
    apply(tmp_path, repo)
    after = placed(tmp_path)
    assert sorted(after.values()) == ["a", "a"], after  # moved, still two
    assert on_b not in after and not alive(on_b)  # stopped, not left running untracked
    apply(tmp_path, repo)  # a pass that finds b empty
    assert nodes(tmp_path) == ["a"]

    for name in ("a.yaml", "web.yaml"):
        (repo / name).unlink()
    commit(repo, {}, "everything leaves")
    apply(tmp_path, repo, "--allow-mass-prune")
    assert placed(tmp_path) == {}
    assert not any(alive(i) for i in after), after
