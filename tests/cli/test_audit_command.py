"""``gitorch audit``: reading the log with its filters, ``--verify`` on a log edited with
the sqlite3 library as someone with the file would, ``--head``/``--expect``, and the
actor of the CLI's own actions (drain, promote) on a real store."""

from __future__ import annotations

import getpass
import json
import socket
import sqlite3
import time
from pathlib import Path

from cli_helpers import gitorch

from gitorch.state import RolloutPhase, RolloutRecord, StateStore


def state_with_entries(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    with StateStore(state) as store:
        store.append_event("revision.started", "applying abc", actor="author:Ada <ada@x>",
                           at=time.time() - 7200)  # fmt: skip
        store.append_event("rollout.abort", "web: abort requested by token ci-bot",
                           service="web", actor="token:ci-bot", data={"token": "ci-bot"})  # fmt: skip
        store.append_event("replica.restarted", "api-0 restarted", service="api")
    return state


def test_audit_lists_entries_with_actors_and_filters(tmp_path: Path) -> None:
    state_with_entries(tmp_path)
    done = gitorch(tmp_path, "audit")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["#", "AT", "(UTC)", "ACTOR", "KIND", "SERVICE", "MESSAGE"]
    assert "author:Ada <ada@x>" in lines[1] and "token:ci-bot" in lines[2]
    assert "gitorch" in lines[3] and "replica.restarted" in lines[3]
    data = json.loads(gitorch(tmp_path, "audit", "--service", "web", "--format", "json").stdout)
    assert [(e["kind"], e["actor"]) for e in data] == [("rollout.abort", "token:ci-bot")]
    assert len(data[0]["hash"]) == 64
    recent = json.loads(gitorch(tmp_path, "audit", "--since", "1h", "--format", "json").stdout)
    assert [e["kind"] for e in recent] == ["rollout.abort", "replica.restarted"]
    none = gitorch(tmp_path, "audit", "--kind", "node.drain")
    assert none.returncode == 0 and "no audit entries match" in none.stdout
    bad = gitorch(tmp_path, "audit", "--since", "yesterday-ish")
    assert bad.returncode == 1 and "expected a duration ago" in bad.stderr


def test_verify_says_intact_then_names_the_edited_entry(tmp_path: Path) -> None:
    state = state_with_entries(tmp_path)
    done = gitorch(tmp_path, "audit", "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "audit log intact: 3 entries; head 3:" in done.stdout
    head = gitorch(tmp_path, "audit", "--head").stdout.strip()
    assert head.startswith("3:") and len(head) == 2 + 64
    conn = sqlite3.connect(state / "state.db", isolation_level=None)
    conn.execute("DROP TRIGGER audit_log_no_update")
    conn.execute("UPDATE audit_log SET actor = 'user:nobody@nowhere' WHERE id = 2")
    conn.close()
    done = gitorch(tmp_path, "audit", "--verify")
    assert done.returncode == 1
    assert "audit log tampered: 1 problem(s) in 3 entries" in done.stdout
    assert "#2 was edited: its content does not match its hash" in done.stdout
    report = json.loads(gitorch(tmp_path, "audit", "--verify", "--format", "json").stdout)
    assert report["intact"] is False and report["problems"][0]["entry"] == 2
    # --expect: a head kept elsewhere must still be there.
    done = gitorch(tmp_path, "audit", "--verify", "--expect", f"3:{'0' * 64}")
    assert done.returncode == 1 and "#3 is not the entry that was recorded" in done.stdout
    bad = gitorch(tmp_path, "audit", "--verify", "--expect", "three")
    assert bad.returncode == 1 and "expected ID:HASH" in bad.stderr


def test_cli_actions_name_the_local_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateStore(state) as store:
        store.register_node("node-b", "process")
        now = time.time()
        store.upsert_rollout(
            RolloutRecord(
                service="web", revision="a" * 40, spec_digest="d" * 64, strategy="Canary",
                phase=RolloutPhase.PAUSED, step=1, weight=20, started_at=now, updated_at=now,
                spec={},
            )
        )  # fmt: skip
    assert gitorch(tmp_path, "drain", "node-b").returncode == 0
    assert gitorch(tmp_path, "promote", "web").returncode == 0
    me = f"user:{getpass.getuser()}@{socket.gethostname()}"
    entries = json.loads(gitorch(tmp_path, "audit", "--format", "json").stdout)
    assert [(e["kind"], e["actor"]) for e in entries] == [
        ("node.drain", me),
        ("rollout.promote", me),
    ]
    assert entries[1]["message"] == f"web: promote requested by {me.removeprefix('user:')}"
    assert gitorch(tmp_path, "audit", "--verify").returncode == 0
