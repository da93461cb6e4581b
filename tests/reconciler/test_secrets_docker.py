"""Secret files on the real Docker engine: bind-mounted read-only from tmpfs at
/run/secrets, nothing of their value in ``docker inspect`` (an env secret is there, as
docs/manifests.md says), nothing in the state directory."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
from reconciler_helpers import Cluster, commit, converged, docker_service, wait_for

from gitorch.runtime._secret_files import on_memory

pytestmark = pytest.mark.docker


def test_file_secrets_leave_nothing_in_docker_inspect(docker_cluster: Cluster) -> None:
    cluster = docker_cluster
    secrets_dir = cluster.root / "secrets"
    secrets_dir.mkdir(mode=0o700)
    file_value = f"file-{secrets.token_hex(12)}"
    env_value = f"env-{secrets.token_hex(12)}"
    (secrets_dir / "token").write_text(file_value)
    (secrets_dir / "api-key").write_text(env_value)
    manifest = docker_service("api", port=cluster.port, image="gitorch-example/api:1", replicas=1)
    manifest = manifest.replace(
        "  replicas: 1\n",
        "  replicas: 1\n  env:\n    API_KEY: {secretFile: api-key}\n"
        "  secrets:\n    - {name: token, secretFile: token}\n",
    )
    sha = commit(cluster.repo, {"api.yaml": manifest}, "api with a secret file")
    daemon = cluster.daemon(extra=["--secrets-dir", str(secrets_dir)])
    wait_for("api up", lambda: converged(daemon.service("api"), sha, 1), 90,
             describe=daemon.log_tail)  # fmt: skip
    container = daemon.service("api")["instances"][0]["id"]  # type: ignore[index]

    inspect = subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert file_value not in inspect
    assert env_value in inspect  # env delivery: visible to whoever can inspect the engine
    mounts = json.loads(inspect)[0]["Mounts"]
    [mount] = [m for m in mounts if m["Destination"] == "/run/secrets/token"]
    assert mount["RW"] is False and mount["Type"] == "bind"

    def in_container(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "exec", container, *command], capture_output=True,
                              text=True, check=False)  # fmt: skip

    assert in_container("cat", "/run/secrets/token").stdout == file_value
    assert in_container("sh", "-c", "echo $SECRETS_DIR").stdout.strip() == "/run/secrets"
    assert in_container("sh", "-c", "echo x > /run/secrets/token").returncode != 0

    found = subprocess.run(["grep", "-r", "-l", "-a", "-F", file_value, str(cluster.state)],
                           capture_output=True, text=True)  # fmt: skip
    assert found.stdout == "" and found.returncode == 1
    found = subprocess.run(["grep", "-r", "-l", "-a", "-F", env_value, str(cluster.state)],
                           capture_output=True, text=True)  # fmt: skip
    assert found.stdout == "" and found.returncode == 1

    # A container removed outside gitorch: replaced, and its secret files swept.
    host_file = Path(mount["Source"])
    assert host_file.read_text() == file_value and on_memory(host_file)
    subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=True)
    wait_for(
        "replaced",
        lambda: (
            converged(daemon.service("api"), sha, 1)
            and daemon.service("api")["instances"][0]["id"] != container
        ),  # type: ignore[index]
        90,
        describe=daemon.log_tail,
    )
    wait_for("the removed container's files swept", lambda: not host_file.parent.exists(), 10)
    container = daemon.service("api")["instances"][0]["id"]  # type: ignore[index]
    inspect = subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    host_file = Path(
        next(m for m in json.loads(inspect)[0]["Mounts"] if m["Destination"].endswith("/token"))[
            "Source"
        ]
    )
    # A replica gitorch removes takes its secret files with it.
    zero = commit(cluster.repo, {"api.yaml": manifest.replace("replicas: 1", "replicas: 0")},
                  "scale to zero")  # fmt: skip
    wait_for("scaled to zero", lambda: converged(daemon.service("api"), zero, 0), 60,
             describe=daemon.log_tail)  # fmt: skip
    assert not host_file.exists() and not host_file.parent.exists()
