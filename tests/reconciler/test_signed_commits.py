"""The signed-commit policy in a real daemon (issue 18): ``--verify-commits`` with a GnuPG
home and an SSH allowed-signers file. Commits signed by a trusted key apply; unsigned,
unknown-key and tampered commits (GPG and SSH each) are never applied: the last good state
keeps running and serving, and status, history and the audit log name the commit and the
reason. A daemon restarted on a refused commit serves the last good one again; ``plan``
and ``apply`` refuse the same commits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from reconciler_helpers import (
    Cluster,
    DaemonProc,
    converged,
    get_version,
    gitorch,
    instance_ids,
    process_service,
    wait_for,
)
from signing_helpers import Keys, commit_signed, make_keys, tamper_last_commit

from gitorch.state import StateStore


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    made = make_keys(tmp_path_factory.mktemp("keys"))
    yield made
    made.stop()


def history(cluster: Cluster) -> list[dict[str, Any]]:
    done = gitorch("history", *cluster.state_args, "--format", "json", cwd=cluster.root)
    assert done.code == 0, done.stderr
    return list(done.json())


def refusal_seen(daemon: DaemonProc, sha: str) -> str | None:
    error = daemon.status().get("lastError")
    return error if error and sha[:12] in error else None


def test_only_trusted_signatures_apply(cluster: Cluster, keys: Keys) -> None:
    port = cluster.port

    def manifest(version: str) -> dict[str, str]:
        return {"api.yaml": process_service("api", port=port, version=version, replicas=2)}

    good = commit_signed(cluster.repo, manifest("1"), "v1 by tess", keys.tess)
    daemon = cluster.daemon(extra=keys.flags())
    wait_for("v1 (GPG, trusted) applied", lambda: converged(daemon.service("api"), good, 2), 60,
             describe=daemon.log_tail)  # fmt: skip
    running = instance_ids(daemon.service("api"))

    refused: dict[str, tuple[str, str]] = {}  # what -> (sha, the reason's words)

    def expect_refused(what: str, sha: str, words: str) -> None:
        error = wait_for(f"{what} refused", lambda: refusal_seen(daemon, sha), 20,
                         describe=daemon.log_tail)  # fmt: skip
        assert f"commit {sha[:12]} is not trusted: {words}" in error, error
        assert error.endswith(f"still applying {applied[:12]}"), error
        refused[what] = (sha, words)
        # Nothing of it runs: same replicas, same version served.
        svc = daemon.service("api")
        assert instance_ids(svc) == running and svc is not None and svc["revision"] == last_good
        assert get_version(port) == served

    def note_applied(sha: str) -> str:
        # A trusted commit that changes nothing becomes the applied revision; waited for, so
        # that the tampering which replaces it is judged after it (not in the same poll).
        wait_for("the note applied", lambda: daemon.status()["revision"] == sha, 20,
                 describe=daemon.log_tail)  # fmt: skip
        return sha

    last_good, served = good, "1"
    applied = good
    expect_refused("unsigned", commit_signed(cluster.repo, manifest("2"), "unsigned", None),
                   "unsigned")  # fmt: skip
    expect_refused(
        "GPG, unknown key",
        commit_signed(cluster.repo, manifest("3"), "by mallory", keys.mallory),
        f"signed by an unknown key {keys.mallory.long_id} (not in --trusted-keys)",
    )
    applied = note_applied(
        commit_signed(
            cluster.repo, manifest("1") | {"note.yaml": "# a note\n"}, "a note", keys.tess
        )
    )
    expect_refused(
        "GPG, tampered",
        tamper_last_commit(cluster.repo, manifest("666")),
        f"bad signature (key {keys.tess.long_id})",
    )
    expect_refused(
        "SSH, unknown key",
        commit_signed(cluster.repo, manifest("4"), "by eve", keys.eve),
        "signed by an unknown key SHA256:",
    )

    # A trusted SSH signature applies.
    by_alice = commit_signed(cluster.repo, manifest("5"), "v5 by alice", keys.alice)
    wait_for("v5 (SSH, trusted) applied", lambda: converged(daemon.service("api"), by_alice, 2),
             60, describe=daemon.log_tail)  # fmt: skip
    assert daemon.status()["lastError"] is None
    last_good, served = by_alice, "5"
    running = instance_ids(daemon.service("api"))
    applied = note_applied(
        commit_signed(
            cluster.repo, manifest("5") | {"note.yaml": "# another\n"}, "a note", keys.alice
        )
    )
    expect_refused("SSH, tampered", tamper_last_commit(cluster.repo, manifest("666")),
                   "bad signature")  # fmt: skip

    # The API's plan honours the policy too (422, the reason).
    code, body = daemon.request("GET", "/api/v1/plan")
    assert code == 422 and "is not trusted: bad signature" in body["error"], (code, body)

    # History: the trusted ones with their verified signers, every refusal with its reason.
    entries = {e["revision"]: e for e in history(cluster)}
    assert entries[good]["signer"] == "Tess Trusted <tess@example.com>"
    assert entries[by_alice]["signer"] == "alice@example.com"
    for what, (sha, words) in refused.items():
        entry = entries[sha]
        assert entry["result"] == "refused", (what, entry)
        assert f"commit {sha[:12]} is not trusted: {words}" in entry["reason"], (what, entry)

    # The audit log: one revision.refused per refused commit, actor the claimed author.
    with StateStore(cluster.store_location, readonly=True) as store:
        audit = store.list_events(kind="revision.refused", limit=None, newest_first=False)
        started = {e.revision: e.actor for e in store.list_events(kind="revision.started")}
    assert [e.revision for e in audit] == [sha for sha, _ in refused.values()]
    assert {e.actor for e in audit} == {"author:Ada Lovelace <ada@example.com>"}
    assert audit[0].data["reason"] == "unsigned" and audit[0].data["policy"] == "signature"
    assert started[good] == "signer:Tess Trusted <tess@example.com>"
    assert started[by_alice] == "signer:alice@example.com"
    done = gitorch("audit", *cluster.state_args, "--kind", "revision.refused",
                   cwd=cluster.root)  # fmt: skip
    assert done.code == 0 and done.stdout.count("is not trusted") == len(refused)

    # A daemon restarted while the newest commit is refused serves the last good one.
    daemon.stop()
    assert get_version(port) == "5"  # the data plane outlives the daemon
    again = cluster.daemon(extra=keys.flags())
    wait_for("the last good revision served again", lambda: get_version(port) == "5", 60,
             describe=again.log_tail)  # fmt: skip
    tampered = refused["SSH, tampered"][0]
    # The proxy served all along: wait for the new daemon's own first pass.
    wait_for("the refusal reported again",
             lambda: tampered[:12] in (again.status().get("lastError") or ""), 60,
             describe=again.log_tail)  # fmt: skip
    svc = again.service("api")
    assert svc is not None and svc["revision"] == by_alice and instance_ids(svc) == running


def test_plan_and_apply_refuse_untrusted_commits(cluster: Cluster, keys: Keys) -> None:
    port = cluster.port
    manifest = {"api.yaml": process_service("api", port=port, replicas=1)}
    state = [*cluster.state_args, "--repo", str(cluster.repo)]
    unsigned = commit_signed(cluster.repo, manifest, "unsigned", None)
    for command in ("plan", "apply"):
        done = gitorch(command, *state, "--runtime", "process", *keys.flags(), cwd=cluster.root)
        assert done.code == 1, (command, done.stdout, done.stderr)
        assert f"commit {unsigned[:12]} is not trusted: unsigned" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    entry = history(cluster)[0]
    assert (entry["revision"], entry["result"]) == (unsigned, "refused")

    two = {"api.yaml": process_service("api", port=port, replicas=2)}
    signed = commit_signed(cluster.repo, two, "signed", keys.alice)
    done = gitorch("plan", *state, "--runtime", "process", *keys.flags(), "--format", "json",
                   cwd=cluster.root)  # fmt: skip
    assert done.code == 2, done.stderr
    assert json.loads(done.stdout)["revision"] == signed
    # The flags go together.
    done = gitorch("plan", *state, "--trusted-keys", str(keys.trusted_keys), cwd=cluster.root)
    assert done.code == 1 and "need --verify-commits" in done.stderr
    done = gitorch("plan", *state, "--verify-commits", cwd=cluster.root)
    assert done.code == 1 and "--verify-commits needs the trusted keys" in done.stderr
