"""API tokens end to end: a real ``gitorch daemon --api-token-file`` (process driver,
built-in load balancer) holding a canary paused at 50%, and the real CLI against it.

One daemon serves the whole module (starting it and pausing a canary is the slow part);
the tests that only read or are refused run first, the abort that ends the rollout last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from data_plane_helpers import stop_data_plane
from reconciler_helpers import (
    DaemonProc,
    cli_env,
    cluster_of,
    commit,
    free_port,
    init_repo,
    process_runtime,
    process_service,
    remove_cluster,
    wait_for,
)

from gitorch.state import StateStore

READ = "0123456789abcdef-read-token-4f2a"
WRITE = "fedcba9876543210-write-token-9c1e"
WRONG = "not-a-configured-token-00000000"

CANARY = """\
  strategy:
    type: Canary
    progressDeadlineSeconds: 120
    autoRollback: true
    canary:
      steps:
        - setWeight: 50
        - pause: {}
"""


def canary(port: int, version: str) -> str:
    return process_service("web", port=port, version=version, replicas=1, strategy=CANARY)


@dataclass
class Paused:
    """The module's world: a daemon whose ``web`` canary (v2) is paused at 50%."""

    root: Path
    daemon: DaemonProc
    good: str
    canary: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def get(self, path: str, token: str | None = READ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.daemon.request("GET", path, headers=headers)

    def service(self) -> dict[str, Any] | None:
        code, data = self.get("/api/v1/status")
        assert code == 200, (code, data)
        return next((s for s in data["services"] if s["name"] == "web"), None)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gitorch", *args],
            capture_output=True,
            text=True,
            env={**cli_env(), **(env or {})},
            cwd=self.root,
            timeout=60,
        )


def private_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def paused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Paused]:
    root = tmp_path_factory.mktemp("auth")
    repo, state = root / "repo", root / "state"
    init_repo(repo)
    tokens = private_file(
        root / "api-tokens",
        f"# who may use the API\nviewer:read:{READ}\ndeployer:write:{WRITE}\n",
    )
    port = free_port()
    good = commit(repo, {"web.yaml": canary(port, "1")}, "web: v1")
    daemon = DaemonProc(
        str(repo),
        state,
        "process",
        resync=0.3,
        extra=["--api-token-file", str(tokens), "--log-level", "debug"],
    )
    try:
        world = Paused(root, daemon, good, "")

        def on(sha: str, phase: str) -> bool:
            svc = world.service()
            return bool(svc and svc["revision"] == sha and svc["rollout"]["phase"] == phase)

        wait_for("v1 healthy", lambda: on(good, "Healthy"), 40, describe=daemon.log_tail)
        world.canary = commit(repo, {"web.yaml": canary(port, "2")}, "web: v2")
        wait_for(
            "the v2 canary paused", lambda: on(world.canary, "Paused"), 40, describe=daemon.log_tail
        )
        yield world
    finally:
        daemon.stop()
        stop_data_plane(state)  # it outlives the daemon by design
        remove_cluster(process_runtime(state), cluster_of(state))


def test_http_missing_or_wrong_token_401_read_token_403_on_actions(paused: Paused) -> None:
    code, body = paused.get("/api/v1/status", token=None)
    assert code == 401 and "Bearer" in body["error"]
    code, body = paused.get("/api/v1/history", token=WRONG)
    assert (code, body) == (401, {"error": "invalid API token"})
    assert paused.get("/api/v1/history")[0] == 200
    assert paused.get("/metrics")[0] == 200
    assert paused.get("/metrics", token=None)[0] == 401
    assert paused.get("/healthz", token=None)[0] == 200

    read = {"Authorization": f"Bearer {READ}"}
    code, body = paused.daemon.request("POST", "/api/v1/services/web/abort", b"{}", read)
    assert code == 403, body
    assert "'viewer' has the read role" in body["error"]
    assert paused.daemon.request("POST", "/api/v1/reconcile", b"{}", read)[0] == 403
    code, body = paused.daemon.request("POST", "/api/v1/services/web/abort", b"{}")
    assert code == 401
    # The webhook keeps its own check (disabled here: no secret), not the bearer one.
    assert paused.daemon.request("POST", "/api/v1/webhook", b"{}")[0] == 403
    svc = paused.service()
    assert svc is not None and svc["rollout"]["phase"] == "Paused"


def test_cli_token_file_and_env(paused: Paused) -> None:
    token_file = private_file(paused.root / "read-token", f"viewer:read:{READ}\n")
    done = paused.cli(
        "status", "--server", paused.url, "--token-file", str(token_file), "--format", "json"
    )
    assert done.returncode == 0, done.stderr
    assert [s["name"] for s in json.loads(done.stdout)["services"]] == ["web"]
    done = paused.cli(
        "history", "--server", paused.url, "--format", "json", env={"GITORCH_TOKEN": READ}
    )
    assert done.returncode == 0, done.stderr
    assert {e["revision"] for e in json.loads(done.stdout)} >= {paused.good}

    # --token-file wins over the environment.
    done = paused.cli(
        "status",
        "--server",
        paused.url,
        "--token-file",
        str(token_file),
        env={"GITORCH_TOKEN": WRONG},
    )
    assert done.returncode == 0, done.stderr


def test_cli_refused_is_one_clear_line_exit_1(paused: Paused) -> None:
    cases = [
        (
            ("status",),
            {},
            f"error: the daemon at {paused.url} requires an API token: pass "
            "--token-file FILE or set GITORCH_TOKEN",
        ),
        (
            ("history",),
            {"GITORCH_TOKEN": WRONG},
            f"error: the daemon at {paused.url} rejected "
            "the API token (invalid API token): check --token-file or GITORCH_TOKEN",
        ),
        (
            ("abort", "web"),
            {"GITORCH_TOKEN": READ},
            f"error: the daemon at {paused.url} refused "
            "the request: token 'viewer' has the read role; POST /api/v1/services/web/abort needs "
            "the write role",
        ),
        (("promote", "web"), {"GITORCH_TOKEN": WRONG}, "rejected the API token"),
    ]
    for args, env, expected in cases:
        done = paused.cli(*args, "--server", paused.url, env=env)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], (args, done.stderr)
        assert "Traceback" not in done.stderr
        for token in (READ, WRITE, WRONG):
            assert token not in done.stderr + done.stdout

    loose = paused.root / "loose-token"
    loose.write_text(READ + "\n", encoding="utf-8")
    loose.chmod(0o644)
    done = paused.cli("status", "--server", paused.url, "--token-file", str(loose))
    assert done.returncode == 1
    assert f"chmod 600 {loose}" in done.stderr
    svc = paused.service()
    assert svc is not None and svc["rollout"]["phase"] == "Paused"


def test_write_token_aborts_and_the_audit_log_names_it(paused: Paused) -> None:
    done = paused.cli("abort", "web", "--server", paused.url, env={"GITORCH_TOKEN": WRITE})
    assert done.returncode == 0, done.stderr
    assert "abort of web requested" in done.stdout

    def rolled_back() -> bool:
        svc = paused.service()
        return bool(
            svc
            and svc["rollout"]["phase"] == "RolledBack"
            and {i["revision"] for i in svc["instances"]} == {paused.good}
        )

    wait_for("the canary rolled back", rolled_back, 30, describe=paused.daemon.log_tail)

    write = {"Authorization": f"Bearer {WRITE}"}
    body = b'{"reason": "after the abort"}'
    assert paused.daemon.request("POST", "/api/v1/reconcile", body, write)[0] == 202

    with StateStore(paused.daemon.state, readonly=True) as store:
        aborts = store.list_events(kind="rollout.abort")
        reconciles = store.list_events(kind="reconcile.requested")
        started = store.list_events(kind="revision.started", newest_first=False)
    # Every entry names its actor: the token for API writes, the commit for its rollout.
    assert [e.actor for e in aborts + reconciles] == ["token:deployer", "token:deployer"]
    assert {e.actor for e in started} == {"author:Ada Lovelace <ada@example.com>"}
    assert [(e.message, e.data) for e in aborts] == [
        ("web: abort requested by token deployer", {"token": "deployer"})
    ]
    assert [(e.message, e.data) for e in reconciles] == [
        (
            "reconcile requested by token deployer: api request: after the abort",
            {"token": "deployer", "reason": "api request: after the abort"},
        )
    ]


def test_no_token_in_the_daemon_log(paused: Paused) -> None:
    """Runs last: every request above (good, wrong, refused) was logged at debug level."""
    log = paused.daemon.log_path.read_text(encoding="utf-8", errors="replace")
    assert "API request refused (401)" in log and "API request refused (403)" in log
    assert "abort of web requested by token deployer" in log
    for token in (READ, WRITE, WRONG):
        assert token not in log


# -- refusing to start -------------------------------------------------------------------


def _daemon_refused(root: Path, *args: str) -> str:
    repo = root / "repo"
    init_repo(repo)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitorch",
            "daemon",
            "--repo",
            str(repo),
            "--state",
            str(root / "state"),
            "--runtime",
            "process",
            *args,
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=root,
        timeout=60,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    # Refused before anything was opened or served.
    assert not (root / "state").exists()
    return done.stderr


def test_open_api_on_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    stderr = _daemon_refused(tmp_path, "--listen", f"0.0.0.0:{free_port()}")
    assert "refusing to serve the API on 0.0.0.0 without authentication" in stderr
    assert "--api-token-file" in stderr and "--api-insecure" in stderr


def test_world_readable_token_file_is_refused(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"deployer:write:{WRITE}\n", encoding="utf-8")
    tokens.chmod(0o644)
    stderr = _daemon_refused(
        tmp_path, "--listen", f"0.0.0.0:{free_port()}", "--api-token-file", str(tokens)
    )
    assert "is accessible by others (mode 0644)" in stderr and f"chmod 600 {tokens}" in stderr
    assert WRITE not in stderr
    assert os.stat(tokens).st_mode & 0o777 == 0o644  # never "fixed" behind the user's back
