"""`gitorch nodes` says how each node enforces resource limits (cgroups, Docker, or not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gitorch.live.inventory import local_node_name


def nodes(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITORCH_")}
    env.update({"NO_COLOR": "1", "COLUMNS": "250", "TERM": "dumb"})
    return subprocess.run(
        [sys.executable, "-m", "gitorch", "nodes", "--state", str(tmp_path / "state"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("driver", "limits"),
    [
        ("process", "cgroup v1 (memory, cpu)"),
        pytest.param("docker", "cgroup v1 (memory, cpu) by Docker", marks=pytest.mark.docker),
    ],
)
def test_nodes_shows_how_limits_are_enforced(tmp_path: Path, driver: str, limits: str) -> None:
    data = nodes(tmp_path, "--runtime", driver, "--format", "json")
    text = nodes(tmp_path, "--runtime", driver)

    assert data.returncode == 0, data.stderr
    (node,) = json.loads(data.stdout)["nodes"]
    assert (node["name"], node["limits"]) == (local_node_name(), limits)
    assert text.returncode == 0, text.stderr
    header, row = text.stdout.splitlines()[:2]
    assert header.rstrip().endswith("LIMITS")
    assert row.rstrip().endswith(limits)
