"""``gitorch plan`` end to end: a real Git repo, the real process (and Docker) driver, the
CLI as a subprocess, the JSON it prints and its exit code (0 no changes, 2 changes, 1 error).

``deploy()`` (tests/e2e/deploy.py) stands in for ``gitorch apply``, which does not exist yet.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from deploy import deploy
from plan_helpers import (
    SECRET_VALUE,
    Node,
    commit,
    desired_at,
    docker_service,
    git,
    init_repo,
    process_service,
    run_plan,
)

from gitorch.diff.fields import SENSITIVE
from gitorch.runtime.base import InstanceState

NO_CHANGES = {"create": 0, "update": 0, "delete": 0, "drift": 0, "unschedulable": 0}


def _shop(repo: Path) -> str:
    """api (2 replicas) and catalog (1, depends on api), committed; returns the sha."""
    return init_repo(
        repo,
        {
            "api.yaml": process_service("api"),
            "catalog.yaml": process_service("catalog", replicas=1, depends_on="api"),
        },
    )


def _deployed_shop(tmp_path: Path, node: Node) -> Path:
    repo = tmp_path / "repo"
    _shop(repo)
    deploy(node.state, desired_at(repo), node.runtime, node.name)
    return repo


def test_empty_cluster_plans_every_service_as_create(tmp_path: Path, process_node: Node) -> None:
    repo = tmp_path / "repo"
    sha = _shop(repo)

    run = run_plan(repo, process_node.state, "process")

    assert run.code == 2, run.stderr
    plan = run.plan
    assert plan["revision"] == sha
    assert plan["baseRevision"] is None
    assert [(c["name"], c["action"]) for c in plan["changes"]] == [
        ("api", "create"),
        ("catalog", "create"),
    ]
    assert all(c["rollout"]["steps"] for c in plan["changes"])
    assert {(p["service"], p["replica"], p["node"]) for p in plan["placements"]} == {
        ("api", "api-1", process_node.name),
        ("api", "api-2", process_node.name),
        ("catalog", "catalog-1", process_node.name),
    }
    assert plan["unschedulable"] == []
    assert plan["order"] == [["api"], ["catalog"]]
    assert plan["summary"]["create"] == 2
    assert plan["drift"] == []
    # plan changes nothing: no replica was started
    assert process_node.runtime.list_instances(process_node.cluster) == []


def test_deployed_revision_plans_no_changes(tmp_path: Path, process_node: Node) -> None:
    repo = _deployed_shop(tmp_path, process_node)

    run = run_plan(repo, process_node.state, "process")

    assert run.code == 0, run.stdout + run.stderr
    plan = run.plan
    assert plan["changes"] == []
    assert plan["drift"] == []
    assert plan["placements"] == []
    assert {k: plan["summary"][k] for k in NO_CHANGES} == NO_CHANGES
    assert plan["unchanged"] == ["Service/api", "Service/catalog"]
    assert plan["baseRevision"] == plan["revision"]


def test_commit_changing_one_env_var_is_exactly_that_change(
    tmp_path: Path, process_node: Node
) -> None:
    repo = _deployed_shop(tmp_path, process_node)
    first = git(repo, "rev-parse", "HEAD")
    second = commit(repo, {"api.yaml": process_service("api", version="2")}, "api v2")

    run = run_plan(repo, process_node.state, "process")

    assert run.code == 2, run.stderr
    plan = run.plan
    assert plan["revision"] == second
    assert plan["baseRevision"] == first
    assert len(plan["changes"]) == 1
    change = run.change("api")
    assert change["action"] == "update"
    assert change["appliedRevision"] == first
    assert change["diff"] == [
        {"op": "change", "path": "spec.env.VERSION", "before": "1", "after": "2"}
    ]
    assert change["replacesReplicas"] is True
    assert change["rollout"]["strategy"] == "RollingUpdate"
    assert len(change["rollout"]["steps"]) >= 2
    # a rolling update of api's 2 replicas places 2 new ones; catalog is untouched
    assert {p["replica"] for p in plan["placements"]} == {"api-1", "api-2"}
    assert plan["unchanged"] == ["Service/catalog"]
    assert plan["summary"]["update"] == 1

    previous = run_plan(repo, process_node.state, "process", "--ref", "HEAD~1")
    assert previous.code == 0, previous.stdout + previous.stderr
    assert previous.plan["revision"] == first
    assert previous.plan["changes"] == []


def test_worktree_edit_is_planned_but_the_committed_ref_is_not_changed(
    tmp_path: Path, process_node: Node
) -> None:
    repo = _deployed_shop(tmp_path, process_node)
    (repo / "catalog.yaml").write_text(
        process_service("catalog", replicas=2, depends_on="api"), encoding="utf-8"
    )

    edited = run_plan(repo, process_node.state, "process", "--worktree")
    committed = run_plan(repo, process_node.state, "process")

    assert edited.code == 2, edited.stderr
    change = edited.change("catalog")
    assert [d["path"] for d in change["diff"]] == ["spec.replicas"]
    assert change["replacesReplicas"] is False
    assert change["rollout"]["strategy"] == "Scale"
    assert [p["replica"] for p in edited.plan["placements"]] == ["catalog-2"]
    assert len(edited.plan["changes"]) == 1
    assert committed.code == 0, committed.stdout + committed.stderr


def test_killed_replica_is_drift_and_no_git_change(tmp_path: Path, process_node: Node) -> None:
    repo = _deployed_shop(tmp_path, process_node)
    runtime = process_node.runtime
    victim = next(
        i for i in runtime.list_instances(process_node.cluster) if i.name.endswith("-api-1")
    )
    pid = int(victim.id.split("-")[0])  # process driver ids are "<pid>-<start ticks>"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while runtime.inspect(victim.id).state is not InstanceState.EXITED:
        assert time.monotonic() < deadline, "the killed replica still runs"
        time.sleep(0.01)

    run = run_plan(repo, process_node.state, "process")

    assert run.code == 2, run.stderr
    plan = run.plan
    assert plan["changes"] == []
    assert plan["drift"], plan
    assert {d["service"] for d in plan["drift"]} == {"api"}
    assert all(d["policy"] == "correct" for d in plan["drift"])
    messages = " | ".join(d["message"] for d in plan["drift"])
    assert "api-1 exited" in messages and "1 of 2" in messages, messages
    assert plan["summary"]["drift"] == len(plan["drift"])


def test_invalid_commit_exits_1_with_file_and_line(tmp_path: Path, process_node: Node) -> None:
    repo = tmp_path / "repo"
    _shop(repo)
    broken = process_service("api").replace("  replicas: 2\n", "  replicas: -1\n")
    commit(repo, {"api.yaml": broken}, "negative replicas")
    line = broken.splitlines().index("  replicas: -1") + 1

    run = run_plan(repo, process_node.state, "process")

    assert run.code == 1, run.stdout + run.stderr
    assert run.stdout == ""
    assert f"api.yaml:{line}:" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr


def test_outputs_are_deterministic_agree_on_the_digest_and_never_show_secrets(
    tmp_path: Path, process_node: Node
) -> None:
    repo = _deployed_shop(tmp_path, process_node)
    rotated = "tok-rotated-77aa"
    changed = process_service("api", version="3").replace(SECRET_VALUE, rotated)
    commit(repo, {"api.yaml": changed}, "api v3, rotated token")

    first = run_plan(repo, process_node.state, "process")
    second = run_plan(repo, process_node.state, "process")
    markdown = run_plan(repo, process_node.state, "process", fmt="markdown")
    text = run_plan(repo, process_node.state, "process", fmt="text")

    assert first.code == second.code == markdown.code == text.code == 2, first.stderr
    assert first.stdout == second.stdout
    digest = first.plan["digest"]
    assert digest == second.plan["digest"] and len(digest) == 64
    token = next(d for d in first.change("api")["diff"] if d["path"] == "spec.env.API_TOKEN")
    assert token == {
        "op": "change",
        "path": "spec.env.API_TOKEN",
        "before": SENSITIVE,
        "after": SENSITIVE,
        "sensitive": True,
    }
    # the pull-request comment pins the same plan the JSON describes
    assert f"`{digest}`" in markdown.stdout
    assert "spec.env.VERSION" in markdown.stdout and "Service/api" in text.stdout
    for run in (first, markdown, text):
        assert SECRET_VALUE not in run.stdout + run.stderr
        assert rotated not in run.stdout + run.stderr


@pytest.mark.docker
def test_docker_create_then_no_changes_then_image_change(tmp_path: Path, docker_node: Node) -> None:
    repo = tmp_path / "repo"
    first = init_repo(repo, {"api.yaml": docker_service("api", image="gitorch-example/api:1")})

    empty = run_plan(repo, docker_node.state, "docker")
    assert empty.code == 2, empty.stderr
    assert [(c["name"], c["action"]) for c in empty.plan["changes"]] == [("api", "create")]
    assert {(p["replica"], p["node"]) for p in empty.plan["placements"]} == {
        ("api-1", docker_node.name),
        ("api-2", docker_node.name),
    }

    deploy(docker_node.state, desired_at(repo), docker_node.runtime, docker_node.name)
    live = run_plan(repo, docker_node.state, "docker")
    assert live.code == 0, live.stdout + live.stderr
    assert live.plan["changes"] == [] and live.plan["drift"] == []

    commit(repo, {"api.yaml": docker_service("api", image="gitorch-example/api:2")}, "api:2")
    changed = run_plan(repo, docker_node.state, "docker")
    assert changed.code == 2, changed.stderr
    assert len(changed.plan["changes"]) == 1
    change = changed.change("api")
    assert change["appliedRevision"] == first
    assert change["diff"] == [
        {
            "op": "change",
            "path": "spec.image",
            "before": "gitorch-example/api:1",
            "after": "gitorch-example/api:2",
        }
    ]
    assert change["rollout"]["strategy"] == "RollingUpdate" and change["rollout"]["steps"]
