"""`gitorch history` as a user runs it: a real state store, the CLI as a subprocess, and
``--server`` against a real ApiServer reading the same store."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import REPO_ROOT, cli_env, commit, init_repo
from provider_helpers import fixed_endpoint_provider, pool_state

from gitorch.api.metrics import Metrics
from gitorch.api.server import ApiServer
from gitorch.apply.autoscaler import SCALED_EVENT
from gitorch.apply.nodepools import NodePoolScaler
from gitorch.commands.history import summarize
from gitorch.diff import Plan
from gitorch.errors import StateError
from gitorch.live.model import LiveState
from gitorch.readmodel.history import history_json, scaling_json
from gitorch.state import RevisionResult, StateStore

SHA_A = "a1" * 20
SHA_B = "b2" * 20
SHA_C = "c3" * 20
T0 = 1_714_564_800.0  # 2024-05-01 12:00:00 UTC


def history(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(tmp_path), "COLUMNS": "250", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "gitorch", "history", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """Three applications: A succeeded (web, api), B failed (web), C rolled back (api)."""
    state_dir = tmp_path / "state"
    with StateStore(state_dir) as store:
        a = store.record_revision(
            SHA_A,
            author="Alice <alice@example.com>",
            committed_at="2024-05-01T13:55:00+02:00",
            signer="alice@example.com (ssh SHA256:abc)",
            services=["web", "api"],
            summary={
                "changes": [
                    {"kind": "Service", "name": "web", "action": "create"},
                    {"kind": "Service", "name": "api", "action": "create"},
                    {"kind": "Volume", "name": "data", "action": "create"},
                    {"kind": "Service", "name": "db", "action": "create"},
                ]
            },
            at=T0,
        )
        store.finish_revision(a.id, RevisionResult.SUCCEEDED)
        b = store.record_revision(
            SHA_B,
            author="Bob <bob@example.com>",
            committed_at="2024-05-02T09:00:00+00:00",
            services=["web"],
            summary={"changes": [{"kind": "Service", "name": "web", "action": "update"}]},
            at=T0 + 86400,
        )
        store.finish_revision(b.id, RevisionResult.FAILED, reason="web-2 never became ready")
        c = store.record_revision(
            SHA_C, author="Carol <carol@example.com>", services=["api"], at=T0 + 2 * 86400
        )
        store.finish_revision(c.id, RevisionResult.ROLLED_BACK, reason="canary analysis failed")
    return state_dir


def test_text_table_newest_first(tmp_path: Path, state: Path) -> None:
    done = history(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "REVISION",
        "AUTHOR",
        "SIGNER",
        "COMMITTED",
        "APPLIED",
        "RESULT",
        "TRIGGER",
        "SUMMARY",
    ]
    rows = lines[1:]
    assert [row[:12] for row in rows] == [SHA_C[:12], SHA_B[:12], SHA_A[:12]]
    carol, bob, alice = rows
    assert "rolled-back" in carol and "services: api: canary analysis failed" in carol
    assert "failed" in bob and "update web: web-2 never became ready" in bob
    assert "2024-05-02 09:00" in bob and "2024-05-02 12:00" in bob
    # committed 13:55+02:00 is 11:55 UTC; applied at T0
    assert "2024-05-01 11:55  2024-05-01 12:00" in alice
    assert "alice@example.com (ssh SHA256:abc)" in alice
    assert "create web, create api, create Volume/data (+1 more)" in alice
    assert "succeeded" in alice
    assert "\x1b[" not in done.stdout  # NO_COLOR


def test_a_summary_names_a_service_once() -> None:
    one = {"kind": "Service", "name": "api", "action": "update"}
    web = {"kind": "Service", "name": "web", "action": "update"}
    reason = "api: progress deadline exceeded (120 s)"
    entry = {"result": "rolled-back", "reason": reason, "changes": [one]}
    assert summarize(entry) == "update api: progress deadline exceeded (120 s)"
    # Several changes: the reason's names say which one failed.
    both = {**entry, "changes": [one, web]}
    assert summarize(both) == f"update api, update web: {reason}"
    # A reason about another service keeps its name.
    other = {**entry, "changes": [web]}
    assert summarize(other) == f"update web: {reason}"
    invalid = {"result": "invalid", "reason": "api.yaml:3:1: bad", "changes": []}
    assert summarize(invalid) == "api.yaml:3:1: bad"
    healed = "converged after the failed application: cache Healthy"
    recovered = {"result": "succeeded", "trigger": "recovered", "reason": healed, "changes": []}
    assert summarize({**recovered, "services": ["api", "cache"]}) == healed


def test_a_volume_leaving_git_says_whether_its_data_stays() -> None:
    def removed(policy: str | None) -> dict[str, object]:
        diff = [{"op": "remove", "path": "spec.size", "before": "1Gi"}]
        if policy is not None:
            diff.append({"op": "remove", "path": "spec.reclaimPolicy", "before": policy})
        return {"kind": "Volume", "name": "data", "action": "delete", "diff": diff}

    def summary(change: dict[str, object]) -> str:
        return summarize({"result": "succeeded", "changes": [change]})

    assert summary(removed("Retain")) == "delete Volume/data (data retained)"
    assert summary(removed("Delete")) == "delete Volume/data (data deleted)"
    # Not recorded (a summary's field budget spent): nothing is claimed either way.
    assert summary(removed(None)) == "delete Volume/data"
    created = {"kind": "Volume", "name": "data", "action": "create", "diff": []}
    assert summary(created) == "create Volume/data"


def test_json_is_the_records_own_shape(tmp_path: Path, state: Path) -> None:
    done = history(tmp_path, "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)  # nothing else on stdout
    with StateStore(state, readonly=True) as store:
        assert data == history_json(store, None, None)
    assert [entry["revision"] for entry in data] == [SHA_C, SHA_B, SHA_A]
    required = {"revision", "author", "committedAt", "appliedAt", "signer", "result", "changes"}
    assert all(required <= set(entry) for entry in data)
    assert [entry["result"] for entry in data] == ["rolled-back", "failed", "succeeded"]
    assert data[1]["signer"] is None and data[1]["reason"] == "web-2 never became ready"
    assert data[2]["appliedAt"] == "2024-05-01T12:00:00.000+00:00"


def test_service_filter_and_limit(tmp_path: Path, state: Path) -> None:
    done = history(tmp_path, "api", "--format", "json")
    assert [entry["revision"] for entry in json.loads(done.stdout)] == [SHA_C, SHA_A]
    done = history(tmp_path, "web", "--limit", "1", "--format", "json")
    assert [entry["revision"] for entry in json.loads(done.stdout)] == [SHA_B]
    done = history(tmp_path, "web")
    assert [row[:12] for row in done.stdout.splitlines()[1:]] == [SHA_B[:12], SHA_A[:12]]
    done = history(tmp_path, "nope")
    assert (done.returncode, done.stdout) == (
        0,
        f"no revisions applied to service nope in {state.absolute()}\n",
    )


def test_no_store_yet(tmp_path: Path) -> None:
    # Nothing was ever applied there: say where it looked, exit 1 (a script notices).
    done = history(tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert f"no gitorch state in {tmp_path / 'state'}" in done.stderr
    assert not (tmp_path / "state").exists()  # reading never creates a store
    done = history(tmp_path, "--format", "json")
    assert (done.returncode, done.stdout) == (1, "")


def test_empty_store(tmp_path: Path) -> None:
    StateStore(tmp_path / "state").close()
    done = history(tmp_path, "--state", str(tmp_path / "state"))
    assert (done.returncode, done.stdout) == (
        0,
        f"no revisions applied yet in {tmp_path / 'state'}\n",
    )
    done = history(tmp_path, "--format", "json")
    assert (done.returncode, json.loads(done.stdout)) == (0, [])


def test_bad_limit_is_a_usage_error(tmp_path: Path) -> None:
    done = history(tmp_path, "--limit", "-3")
    assert done.returncode == 1 and "must be 0 (all) or more" in done.stderr
    done = history(tmp_path, "--state", "x", "--server", "http://127.0.0.1:1")
    assert done.returncode == 1 and "not allowed with argument" in done.stderr


# -- --server: the same history through a running API ----------------------------------


class StoreHandle:
    """Just enough of a DaemonHandle: history from a real read-only store."""

    def __init__(self, state: Path) -> None:
        self.store = StateStore(state, readonly=True)
        self.metrics = Metrics()
        self.broken = False

    def history(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        if self.broken:
            raise StateError("the state store is being migrated")
        return history_json(self.store, service, limit)

    def scaling(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        return scaling_json(self.store, service, limit)

    def status(self) -> dict[str, Any]:
        raise AssertionError("not used")

    def plan(self, ref: str | None) -> Plan:
        raise AssertionError("not used")

    def trigger(self, reason: str) -> None:
        raise AssertionError("not used")

    def healthy(self) -> tuple[bool, str]:
        return True, ""


@pytest.fixture
def daemon(state: Path) -> Iterator[tuple[ApiServer, StoreHandle]]:
    handle = StoreHandle(state)
    api = ApiServer(handle, "127.0.0.1:0")
    api.start()
    try:
        yield api, handle
    finally:
        api.stop()
        handle.store.close()


def test_server_gives_the_same_history(
    tmp_path: Path, daemon: tuple[ApiServer, StoreHandle]
) -> None:
    api, _ = daemon
    other = tmp_path / "elsewhere"  # --server must not read any local state
    local = history(tmp_path, "web", "--format", "json")
    remote = subprocess.run(
        [
            sys.executable,
            "-m",
            "gitorch",
            "history",
            "web",
            "--server",
            api.url,
            "--format",
            "json",
        ],
        cwd=REPO_ROOT,
        env={**cli_env(other), "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    text = history(tmp_path, "--server", api.url + "/")
    assert [row[:12] for row in text.stdout.splitlines()[1:]] == [
        SHA_C[:12],
        SHA_B[:12],
        SHA_A[:12],
    ]


def test_server_errors_are_one_clear_line(
    tmp_path: Path, daemon: tuple[ApiServer, StoreHandle]
) -> None:
    api, handle = daemon
    handle.broken = True
    done = history(tmp_path, "--server", api.url)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: the daemon at {api.url} answered 503: the state store is being migrated"
    )


def test_unreachable_server(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = history(tmp_path, "--server", f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    assert f"cannot reach the gitorch daemon at http://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    done = history(tmp_path, "--server", "127.0.0.1:7420")
    assert done.returncode == 1 and "invalid --server URL" in done.stderr


# -- scaling decisions: the autoscaler's and the node pools' -------------------------------


def _pool_made_a_node(state: Path, tmp_path: Path) -> None:
    """A NodePool below minNodes makes a node through a real provider executable (the
    audit entry its sync writes), and the autoscaler scales web (its audit entry)."""
    command = fixed_endpoint_provider(tmp_path, "tcp://10.0.0.9:2376")
    desired = pool_state("workers", command, min_nodes=1)
    with StateStore(state) as store:
        store.append_event(
            SCALED_EVENT,
            "web: 1 -> 3 replicas (cpu 92% of requests, target 50%)",
            service="web",
            data={"from": 1, "to": 3, "reason": "cpu 92% of requests, target 50%"},
            at=T0 + 3 * 86400,
        )
        [result] = NodePoolScaler(store, clock=lambda: T0 + 3 * 86400 + 60).sync(
            desired, LiveState.empty(), (), frozenset()
        )
        assert result.error == "" and len(result.record.nodes) == 1


def test_scaling_decisions_are_listed_under_the_revisions(state: Path, tmp_path: Path) -> None:
    _pool_made_a_node(state, tmp_path)
    done = history(tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    at = lines.index("scaling decisions")
    assert [row[:12] for row in lines[1 : at - 1]] == [SHA_C[:12], SHA_B[:12], SHA_A[:12]]
    pool, web = lines[at + 2], lines[at + 3]
    assert pool.startswith("2024-05-04 12:01:00  NodePool/workers  nodepool.scaled-up"), pool
    assert "workers: 0 -> 1 nodes (0 node(s), below minNodes 1)" in pool
    assert web.startswith("2024-05-04 12:00:00  web  "), web
    assert "autoscale.scaled" in web and "web: 1 -> 3 replicas" in web

    # Only one service's: the pool's decisions are no service's.
    only_web = history(tmp_path, "web", "--scaling", "--format", "json")
    [entry] = json.loads(only_web.stdout)
    assert (entry["object"], entry["from"], entry["to"]) == ("web", 1, 3)
    every = json.loads(history(tmp_path, "--scaling", "--format", "json").stdout)
    assert [(e["kind"], e["object"], e["from"], e["to"]) for e in every] == [
        ("nodepool.scaled-up", "NodePool/workers", 0, 1),
        ("autoscale.scaled", "web", 1, 3),
    ]
    assert every[0]["reason"] == "0 node(s), below minNodes 1"
    # The JSON of history stays the list of revisions (the contract's shape).
    revisions = json.loads(history(tmp_path, "--format", "json").stdout)
    assert [r["revision"] for r in revisions] == [SHA_C, SHA_B, SHA_A]


def test_scaling_decisions_through_the_server(tmp_path: Path, state: Path) -> None:
    _pool_made_a_node(state, tmp_path)
    handle = StoreHandle(state)
    api = ApiServer(handle, "127.0.0.1:0")
    api.start()
    try:
        local = history(tmp_path, "--scaling", "--format", "json")
        remote = history(tmp_path / "elsewhere", "--scaling", "--server", api.url,
                         "--format", "json")  # fmt: skip
        assert remote.returncode == 0, remote.stderr
        assert json.loads(remote.stdout) == json.loads(local.stdout)
        text = history(tmp_path / "elsewhere", "--server", api.url)
        assert "NodePool/workers  nodepool.scaled-up" in text.stdout, text.stdout
    finally:
        api.stop()
        handle.store.close()


def test_no_scaling_decisions_yet(state: Path, tmp_path: Path) -> None:
    done = history(tmp_path, "--scaling")
    assert done.returncode == 0
    assert done.stdout.startswith("no scaling decisions yet in "), done.stdout
    assert "scaling decisions" not in history(tmp_path).stdout


AUTOSCALED_WEB = """\
apiVersion: gitorch.dev/v1
kind: Service
metadata: {name: web}
spec:
  command: ["/bin/sleep", "600"]
  replicas: 1
  resources: {requests: {cpu: 10m, memory: 8Mi}}
  autoscale:
    minReplicas: MIN
    maxReplicas: 4
    metrics: [{type: cpu, targetAverageUtilization: 50}]
"""


def test_a_count_raised_to_min_replicas_is_a_recorded_decision(tmp_path: Path) -> None:
    """Git asks for 1 replica of a service autoscaled between 2 and 4: the pass runs 2,
    and that raise is a scaling decision (reason "below minReplicas") in history's
    scaling decisions and the audit log, once; minReplicas raised to 3 in Git is another."""
    repo = init_repo(tmp_path / "repo")
    env = cli_env(tmp_path)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gitorch", *args, "--state", str(tmp_path / "state")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip

    def apply() -> None:
        done = run("apply", "--repo", str(repo), "--runtime", "process", "--timeout", "60s")
        assert done.returncode == 0, (done.stdout, done.stderr)

    try:
        commit(repo, {"web.yaml": AUTOSCALED_WEB.replace("MIN", "2")})
        apply()
        apply()  # nothing new: the count is the autoscaler's now, no second decision
        commit(repo, {"web.yaml": AUTOSCALED_WEB.replace("MIN", "3")})
        apply()
        scaling = run("history", "--scaling", "--format", "json")
        assert scaling.returncode == 0, scaling.stderr
        decisions = [
            (d["kind"], d["object"], d["from"], d["to"], d["reason"])
            for d in json.loads(scaling.stdout)
        ]
        assert decisions == [
            ("autoscale.scaled", "web", 2, 3, "below minReplicas"),
            ("autoscale.scaled", "web", 1, 2, "below minReplicas"),
        ], decisions
        audit = run("audit", "--kind", "autoscale.scaled", "--format", "json")
        assert audit.returncode == 0, audit.stderr
        entries = json.loads(audit.stdout)
        assert [e["message"] for e in entries] == [
            "web: 1 -> 2 replicas (below minReplicas)",
            "web: 2 -> 3 replicas (below minReplicas)",
        ], entries
        assert {e["actor"] for e in entries} == {"gitorch"}, entries
    finally:
        (repo / "web.yaml").unlink()
        commit(repo, {}, "web leaves")
        gone = run("apply", "--repo", str(repo), "--runtime", "process", "--timeout", "60s",
                   "--allow-mass-prune")  # fmt: skip
        assert gone.returncode == 0, gone.stderr
