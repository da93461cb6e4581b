"""Helpers for the ``gitorch plan`` end-to-end tests: a real Git repo, the CLI as a
subprocess, manifests of the example apps, the desired state as apply would load it.

Named ``plan_helpers`` (not conftest) so test modules can import it under a name no other
test folder uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitorch.manifests import DesiredState, ManifestLoader
from gitorch.runtime.base import Runtime
from gitorch.sources import LocalRepoSource

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_API_APP = REPO_ROOT / "examples" / "apps" / "api" / "app.py"
EXAMPLE_BUILD_SH = REPO_ROOT / "examples" / "images" / "build.sh"
#: A secret-looking env value: it must never appear in any plan output.
SECRET_VALUE = "tok-e2e-8c1f0a"
CLI_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Node:
    """The implicit local node the CLI uses when the repo declares none."""

    name: str
    runtime: Runtime
    state: Path
    cluster: str


@dataclass(frozen=True)
class PlanRun:
    """One ``gitorch plan`` run: exit code, raw stdout/stderr, and the JSON (if any)."""

    code: int
    stdout: str
    stderr: str

    @property
    def plan(self) -> dict[str, Any]:
        assert self.stdout, f"no stdout (exit {self.code}); stderr:\n{self.stderr}"
        parsed: dict[str, Any] = json.loads(self.stdout)
        return parsed

    def change(self, name: str) -> dict[str, Any]:
        found = [c for c in self.plan["changes"] if c["name"] == name]
        assert len(found) == 1, self.plan["changes"]
        return found[0]


def run_plan(repo: Path, state: Path, driver: str, *extra: str, fmt: str = "json") -> PlanRun:
    """``python3 -m gitorch plan --repo R --state S --runtime D --format F [extra]``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "NO_COLOR": "1",
    }
    env.pop("GITORCH_STATE", None)
    env.pop("GITORCH_DEBUG", None)
    argv = [sys.executable, "-m", "gitorch", "plan", "--repo", str(repo), "--state", str(state)]
    argv += ["--runtime", driver, "--format", fmt, *extra]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env,
        cwd=repo.parent,
        timeout=CLI_TIMEOUT_SECONDS,
    )
    return PlanRun(done.returncode, done.stdout, done.stderr)


# -- git -----------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def init_repo(repo: Path, files: dict[str, str]) -> str:
    """A new repository with ``files`` in its first commit; returns the commit sha."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    return commit(repo, files, "first")


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    """Write ``files`` (path -> text) and commit them; returns the new sha."""
    for path, text in files.items():
        (repo / path).write_text(text, encoding="utf-8")
    git(repo, "add", "--", *files)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def desired_at(repo: Path, ref: str = "HEAD") -> DesiredState:
    """The desired state at ``ref``, read and validated the way plan (and apply) read it."""
    snapshot = LocalRepoSource(repo).snapshot(ref, "")
    result = ManifestLoader().load(
        snapshot.files, revision=snapshot.revision, root_path=snapshot.root_path
    )
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state


# -- manifests -----------------------------------------------------------------------------


def process_service(
    name: str, *, version: str = "1", replicas: int = 2, depends_on: str | None = None
) -> str:
    """The example api app (``examples/apps/api/app.py``) for the process driver."""
    lines = [
        "apiVersion: gitorch.dev/v1",
        "kind: Service",
        f"metadata: {{name: {name}}}",
        "spec:",
        f'  command: ["{sys.executable}", "{EXAMPLE_API_APP}"]',
        f'  env: {{VERSION: "{version}", HOST: "127.0.0.1", API_TOKEN: "{SECRET_VALUE}"}}',
        f"  replicas: {replicas}",
        "  ports: [{name: http, containerPort: 8080}]",
        "  readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}",
        "  resources: {requests: {cpu: 50m, memory: 32Mi}}",
    ]
    if depends_on:
        lines.append(f"  dependsOn: [{depends_on}]")
    return "\n".join(lines) + "\n"


def docker_service(name: str, *, image: str, replicas: int = 2) -> str:
    """The example api image (``examples/images/build.sh``): busybox httpd + CGI."""
    return (
        "apiVersion: gitorch.dev/v1\n"
        "kind: Service\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  image: {image}\n"
        f"  replicas: {replicas}\n"
        "  ports: [{name: http, containerPort: 8080}]\n"
        "  readinessProbe: {httpGet: {path: /cgi-bin/healthz, port: http}, periodSeconds: 1}\n"
        "  resources: {requests: {cpu: 50m, memory: 16Mi}}\n"
    )
