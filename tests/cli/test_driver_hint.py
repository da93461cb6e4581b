"""The hint when the implicit local node's driver cannot run the repo's services.

`--runtime` defaults to docker when an engine answers (the CLI contract); the example
shop's services are command-only (the process driver's). Found as a newcomer: a first
`gitorch plan` of the shop on a machine with Docker said all 7 replicas unschedulable
and no more."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import REPO_ROOT, gitorch
from data_plane_helpers import stop_data_plane
from listen_ports import free_port
from reconciler_helpers import commit, init_repo

from gitorch.decide.driver_hint import driver_mismatch
from gitorch.manifests import ManifestLoader
from gitorch.manifests.model import DesiredState

SHOP = REPO_ROOT / "examples" / "repo"
NODE = """\
apiVersion: gitorch.dev/v1
kind: Node
metadata: {name: n1}
spec:
  runtime: {driver: docker, endpoint: "unix:///var/run/docker.sock"}
"""


class _File:
    def __init__(self, path: str, data: bytes) -> None:
        self.path, self.data = path, data
        self.blob_id = hashlib.sha1(data).hexdigest()


def shop(*extra: str) -> DesiredState:
    files = [_File(p.name, p.read_bytes()) for p in sorted(SHOP.glob("*.yaml"))]
    files += [_File(f"extra{i}.yaml", text.encode()) for i, text in enumerate(extra)]
    loaded = ManifestLoader().load(files, revision="a" * 40)
    assert loaded.state is not None, [str(d) for d in loaded.diagnostics]
    return loaded.state


def test_command_only_services_on_a_defaulted_docker_node_get_the_hint() -> None:
    hint = driver_mismatch(shop(), None, "docker")
    assert hint is not None
    assert "api, counter, web, worker can only run on the process driver" in hint
    assert "pass --runtime process" in hint


def test_no_hint_when_the_driver_fits_or_was_chosen() -> None:
    assert driver_mismatch(shop(), None, "process") is None
    assert driver_mismatch(shop(), "docker", "docker") is None  # asked for: the plan says why
    assert driver_mismatch(shop(NODE), None, "docker") is None  # a declared Node


@pytest.mark.docker
def test_plan_of_the_shop_says_to_pass_runtime_process(tmp_path: Path) -> None:
    done = gitorch(tmp_path, "plan", "--path", "examples/repo")
    assert done.returncode == 2, done.stderr
    assert "7 replica(s) unschedulable" in done.stdout
    assert "pass --runtime process" in done.stderr
    fits = gitorch(tmp_path, "plan", "--path", "examples/repo", "--runtime", "process")
    assert fits.returncode == 2, fits.stderr
    assert "unschedulable" not in fits.stdout
    assert "--runtime" not in fits.stderr


def test_no_hint_where_no_engine_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an engine the default is the process driver, which runs the shop."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    done = gitorch(tmp_path, "plan", "--path", "examples/repo")
    assert done.returncode == 2, done.stderr
    assert "unschedulable" not in done.stdout
    assert "--runtime" not in done.stderr


SLEEPER = """\
apiVersion: gitorch.dev/v1
kind: Service
metadata: {name: sleeper}
spec:
  command: ["/bin/sleep", "600"]
"""


@pytest.mark.docker
def test_the_daemon_logs_the_hint(tmp_path: Path) -> None:
    """`gitorch daemon` without --runtime on a machine with an engine: the log says why
    nothing starts and what to do (status shows the replica pending, with the reason)."""
    repo = tmp_path / "repo"
    init_repo(repo)
    commit(repo, {"sleeper.yaml": SLEEPER}, "a command-only service")
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "gitorch", "daemon", "--repo", str(repo), "--state", str(state)]
    argv += ["--listen", f"127.0.0.1:{free_port()}", "--interval", "60s"]
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while "pass --runtime process" not in log.read_text() and time.monotonic() < deadline:
            assert daemon.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "sleeper can only run on the process driver" in log.read_text()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        stop_data_plane(state)
