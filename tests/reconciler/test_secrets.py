"""Secrets never rest in plain text (issue 18), on a real daemon with the process driver:
values from ``--secrets-dir`` and from an age-encrypted ``kind: Secret`` in the repo reach
the replicas (env and files on tmpfs) while ``grep -r`` of the whole state directory, WAL
included, finds none of them; the state directory is private; rotating a value (a new
file, a re-encrypted Secret committed) rolls the service with 0 failed requests under
load; ``gitorch plan`` shows the rotation as a sensitive change."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import time
from pathlib import Path

from age_helpers import age_identity, secret_manifest
from reconciler_helpers import (
    Cluster,
    LoadClient,
    commit,
    converged,
    environ_of,
    gitorch,
    instance_ids,
    pid_of,
    process_service,
    wait_for,
)

from gitorch.runtime._secret_files import on_memory
from gitorch.state import StateStore
from gitorch.state.etcd.backend import EtcdBackend


def service(port: int) -> str:
    env = {
        "DB_PASSWORD": {"secretFile": "db-password"},
        "STRIPE": {"secret": "payments", "key": "stripe"},
    }
    text = process_service("api", port=port, replicas=2, env=env)  # type: ignore[arg-type]
    return text + (
        "  secrets:\n"
        "    - {name: token, secretFile: token}\n"
        "    - {name: stripe-key, secret: payments, key: stripe}\n"
    )


def grep_state(state: Path, *values: str) -> list[str]:
    """``grep -r -l -F`` over the whole state directory, WAL and caches included."""
    found: list[str] = []
    for value in values:
        done = subprocess.run(
            ["grep", "-r", "-l", "-a", "-F", value, str(state)], capture_output=True, text=True
        )
        assert done.returncode in (0, 1), done.stderr
        found += [f"{value[:8]}... in {line}" for line in done.stdout.splitlines()]
    return found


def grep_store(cluster: Cluster, *values: str) -> list[str]:
    """With etcd state, the same over the etcd members' data (its WAL and database) and
    over every key of the namespace as read back."""
    if cluster.store_url is None:
        return []
    found = [f for root in cluster.store_dirs for f in grep_state(root, *values)]
    with StateStore(cluster.store_url, readonly=True) as store:
        assert isinstance(store.backend, EtcdBackend)
        dumped = json.dumps(store.backend.range(""))
    return found + [f"{v[:8]}... in the namespace" for v in values if v in dumped]


def not_private(state: Path) -> list[str]:
    loose: list[str] = []
    for path in [state, *state.rglob("*")]:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or stat.S_ISSOCK(info.st_mode):
            continue
        if info.st_mode & 0o077:
            loose.append(f"{stat.S_IMODE(info.st_mode):04o} {path}")
    return loose


def replica_sees(svc: dict, name: str) -> dict[str, str]:  # type: ignore[type-arg]
    instance = next(i for i in svc["instances"] if i["state"] == "running")
    env = environ_of(pid_of(instance["id"]))
    files = Path(env["SECRETS_DIR"])
    return {
        "DB_PASSWORD": env["DB_PASSWORD"],
        "STRIPE": env["STRIPE"],
        "token": (files / "token").read_text(),
        "stripe-key": (files / "stripe-key").read_text(),
        "dir": str(files),
        name: "",
    }


def test_secret_values_never_rest_and_rotation_rolls_without_failures(cluster: Cluster) -> None:
    port = cluster.port
    secrets_dir = cluster.root / "secrets"
    secrets_dir.mkdir(mode=0o700)
    db_v1, token, stripe_v1 = (f"{n}-{secrets.token_hex(12)}" for n in ("db", "tok", "stripe"))
    (secrets_dir / "db-password").write_text(db_v1 + "\n")
    (secrets_dir / "token").write_text(token)
    key = cluster.root / "age.key"
    recipient = age_identity(key)
    first = commit(
        cluster.repo,
        {"api.yaml": service(port), "secrets.yaml": secret_manifest("payments", {"stripe": stripe_v1}, recipient)},
        "api with secrets",
    )  # fmt: skip
    daemon = cluster.daemon(extra=["--secrets-dir", str(secrets_dir), "--age-key", str(key)])
    wait_for("api up", lambda: converged(daemon.service("api"), first, 2), 60,
             describe=daemon.log_tail)  # fmt: skip

    # The replicas get the values: env, and files on tmpfs (0600, in a 0700 folder).
    seen = replica_sees(daemon.service("api"), "-")  # type: ignore[arg-type]
    assert (seen["DB_PASSWORD"], seen["STRIPE"]) == (db_v1, stripe_v1)
    assert (seen["token"], seen["stripe-key"]) == (token, stripe_v1)
    folder = Path(seen["dir"])
    assert on_memory(folder), folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "token").stat().st_mode) == 0o600

    # Nothing of them in the state directory (the WAL is there: the daemon runs), nor in
    # the daemon's log; the directory and everything in it is private.
    if cluster.store_url is None:
        assert list(cluster.state.glob("state.db-wal")), "the WAL should exist while running"
    assert grep_state(cluster.state, db_v1, token, stripe_v1) == []
    assert grep_store(cluster, db_v1, token, stripe_v1) == []
    log = daemon.log_path.read_text(errors="replace")
    assert not any(v in log for v in (db_v1, token, stripe_v1))
    assert not_private(cluster.state) == []

    # Rotate the file under load: the service rolls, no request fails.
    running = instance_ids(daemon.service("api"))
    db_v2 = f"db-{secrets.token_hex(12)}"
    with LoadClient(port) as load:
        time.sleep(0.5)
        (secrets_dir / "db-password").write_text(db_v2 + "\n")

        def rolled() -> bool:
            svc = daemon.service("api")
            return bool(converged(svc, first, 2) and not (instance_ids(svc) & running))

        wait_for("the rotation rolled out", rolled, 60, describe=daemon.log_tail)
        time.sleep(0.5)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 50
    assert replica_sees(daemon.service("api"), "-")["DB_PASSWORD"] == db_v2  # type: ignore[arg-type]

    # Re-encrypt the repo Secret with a new value and commit it: rolls again, 0 failures.
    running = instance_ids(daemon.service("api"))
    stripe_v2 = f"stripe-{secrets.token_hex(12)}"
    with LoadClient(port) as load:
        time.sleep(0.5)
        second = commit(
            cluster.repo,
            {"secrets.yaml": secret_manifest("payments", {"stripe": stripe_v2}, recipient)},
            "rotate the stripe key",
        )
        wait_for(
            "the re-encrypted secret rolled out",
            lambda: (
                converged(daemon.service("api"), second, 2)
                and not (instance_ids(daemon.service("api")) & running)
            ),
            60,
            describe=daemon.log_tail,
        )
        time.sleep(0.5)
    assert load.failures == [], load.failures[:5]
    seen = replica_sees(daemon.service("api"), "-")  # type: ignore[arg-type]
    assert (seen["STRIPE"], seen["stripe-key"]) == (stripe_v2, stripe_v2)

    # Re-encrypting the same value rolls nothing (the digest is of the value).
    running = instance_ids(daemon.service("api"))
    third = commit(
        cluster.repo,
        {"secrets.yaml": secret_manifest("payments", {"stripe": stripe_v2}, recipient)},
        "re-encrypt, same value",
    )
    wait_for("the same value applied", lambda: daemon.status()["tracking"]["revision"] == third,
             20)  # fmt: skip
    time.sleep(2.0)
    assert instance_ids(daemon.service("api")) == running

    every = (db_v1, db_v2, token, stripe_v1, stripe_v2)
    assert grep_state(cluster.state, *every) == []
    assert grep_store(cluster, *every) == []
    assert not_private(cluster.state) == []

    # The plan shows a rotation as a sensitive change, never the value.
    daemon.stop()
    db_v3 = f"db-{secrets.token_hex(12)}"
    (secrets_dir / "db-password").write_text(db_v3 + "\n")
    common = ["--repo", str(cluster.repo), *cluster.state_args, "--runtime", "process",
              "--secrets-dir", str(secrets_dir), "--age-key", str(key)]  # fmt: skip
    done = gitorch("plan", *common, "--format", "json", cwd=cluster.root)
    assert done.code == 2, done.stderr
    plan = json.loads(done.stdout)
    api = next(c for c in plan["changes"] if c["name"] == "api")
    assert {"op": "change", "path": "spec.env.DB_PASSWORD.digest", "before": "(sensitive value)",
            "after": "(sensitive value)", "sensitive": True} in api["diff"]  # fmt: skip
    text = gitorch("plan", *common, cwd=cluster.root)
    assert "spec.env.DB_PASSWORD.digest" in text.stdout and "(sensitive value)" in text.stdout
    # Without the values (a CI runner: no --secrets-dir, no --age-key) the applied digests
    # stand: nothing to do, rather than every service with a secret replaced.
    blind = gitorch("plan", "--repo", str(cluster.repo), *cluster.state_args, "--runtime",
                    "process", cwd=cluster.root)  # fmt: skip
    assert blind.code == 0 and "No changes" in blind.stdout, blind.stdout + blind.stderr
    for output in (done.stdout, text.stdout, text.stderr):
        assert not any(v in output for v in (*every, db_v3))
