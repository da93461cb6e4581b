"""`gitorch status` and `gitorch nodes` as a user runs them, on real replicas.

Replicas are started with the same runtime the CLI opens (process driver bookkeeping in
``<state>/nodes/<node>``, or the real Docker engine) and recorded in the real store; the
commands run as ``python3 -m gitorch`` subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from docker_address_helpers import replica_address_pattern
from live_helpers import (
    DOCKER_ENDPOINT,
    EXAMPLE_API_APP,
    SHA_1,
    SHA_2,
    assess_until_answering,
    closed_tcp_endpoint,
    docker_client,  # noqa: F401 (fixture)
    example_images,  # noqa: F401 (fixture)
    load_services,
    record_applied_revision,
    record_rollout,
    remove_cluster,
    service_yaml,
    start_replicas,
)

from gitorch.live import NodeTarget, cluster_name, observe
from gitorch.live.inventory import local_node_name, runtime_dir
from gitorch.manifests import Service
from gitorch.runtime.base import Instance, Runtime
from gitorch.runtime.process import ProcessRuntime
from gitorch.state import RevisionResult, RolloutPhase, StateStore
from gitorch.state.lock import DaemonLock
from gitorch.state.records import BackoffRecord

ADDRESS = replica_address_pattern()


def gitorch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python3 -m gitorch ARGS`` with plain output (no colour, wide lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITORCH_")}
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "TERM": "dumb"})
    return subprocess.run(
        [sys.executable, "-m", "gitorch", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def api_manifest(name: str = "api", replicas: int = 2) -> str:
    return service_yaml(
        name,
        replicas=replicas,
        command=[sys.executable, str(EXAMPLE_API_APP)],
        env={"HOST": "127.0.0.1"},
        probe_path="/healthz",
        expose_port=18001,
        cpu="100m",
        memory="32Mi",
    )


class Cluster:
    """A state dir, the local node's runtime as the CLI opens it, and the store."""

    def __init__(self, state: Path, runtime: Runtime, node: str) -> None:
        self.state = state
        self.runtime = runtime
        self.node = node
        self.name = cluster_name(state)

    def wait_until_answering(self) -> None:
        """Let the apps bind their ports, so the one probe `status` runs is meaningful."""
        target = NodeTarget(name=self.node, driver=self.runtime.driver)
        with StateStore(self.state, readonly=True) as store:
            live = observe([target], {self.node: self.runtime}, self.name, store)
        assess_until_answering(live, {self.node: self.runtime})

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return gitorch(*args, "--state", str(self.state), cwd=self.state.parent)

    def run_until(
        self, done: Callable[[str], bool], *args: str, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the command until ``done(stdout)`` (or ``timeout``); the last run. Without
        a daemon, status probes each replica once, within its probe's timeoutSeconds (1
        s): beside CI's heaviest tests an answering app can miss that once (CI: ready 1
        of 2 after both had answered)."""
        deadline = time.monotonic() + timeout
        while True:
            ran = self.run(*args)
            if ran.returncode != 0 or done(ran.stdout) or time.monotonic() > deadline:
                return ran
            time.sleep(0.2)


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Cluster]:
    """The implicit local node with the process driver (the store registers no Node)."""
    state = tmp_path / "state"
    node = local_node_name()
    cluster = Cluster(state, ProcessRuntime(node, runtime_dir(state, node)), node)
    try:
        yield cluster
    finally:
        remove_cluster(cluster.runtime, cluster.name)


def applied_api(cluster: Cluster) -> tuple[Service, list[Instance]]:
    """api mid-rollout to SHA_2 (step 1, weight 25): replica 1 old, replica 2 new;
    SHA_1 applied, SHA_2's application failed."""
    api = load_services(api_manifest())["api"]
    old = start_replicas(cluster.runtime, api, cluster.name, 1, revision=SHA_1, digest="old")
    new = start_replicas(cluster.runtime, api, cluster.name, 1, first=2, revision=SHA_2)
    with StateStore(cluster.state) as store:
        record_rollout(
            store,
            api,
            revision=SHA_2,
            phase=RolloutPhase.PROGRESSING,
            step=1,
            weight=25,
            message="step 1: weight 25%",
        )
        record_applied_revision(store, SHA_1, ["api"])
        record_applied_revision(
            store, SHA_2, ["api"], result=RevisionResult.FAILED, reason="api: analysis failed"
        )
    cluster.wait_until_answering()
    return api, old + new


def test_fresh_state_dir_has_no_services(local: Cluster) -> None:
    text = local.run("status", "--runtime", "process")
    # No state directory at all: where it looked, and exit 1 (tests/cli/test_pipes_and_scripts.py).
    assert text.returncode == 1 and f"no gitorch state in {local.state}" in text.stderr
    StateStore(local.state).close()
    text = local.run("status", "--runtime", "process")
    assert text.returncode == 0, text.stderr
    assert f"no services applied or running in {local.state}" in text.stdout

    done = local.run("status", "--runtime", "process", "--format", "json")
    assert done.returncode == 0
    data = json.loads(done.stdout)
    assert (data["revision"], data["lastError"], data["services"]) == (None, None, [])


def test_status_json_has_the_documented_shape(local: Cluster) -> None:
    _, instances = applied_api(local)

    done = local.run_until(
        lambda out: json.loads(out)["services"][0]["replicas"]["ready"] == 2,
        *("status", "--runtime", "process", "--format", "json"),
    )

    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)  # nothing but the JSON document on stdout
    assert data["revision"] == SHA_1
    assert data["applying"] is None  # SHA_2's application ended (failed)
    assert data["lastError"] == "api: analysis failed"
    (svc,) = data["services"]
    assert svc["name"] == "api"
    assert svc["revision"] == SHA_2
    replicas = svc["replicas"]
    assert (replicas["desired"], replicas["ready"], replicas["updated"]) == (2, 2, 1)
    assert {k: svc["rollout"][k] for k in ("phase", "step", "weight")} == {
        "phase": "Progressing",
        "step": 1,
        "weight": 25,
    }
    by_id = {i["id"]: i for i in svc["instances"]}
    assert set(by_id) == {i.id for i in instances}
    for instance, revision in zip(instances, (SHA_1, SHA_2), strict=True):
        shown = by_id[instance.id]
        assert shown["node"] == local.node
        assert shown["revision"] == revision
        assert shown["ready"] is True
        assert shown["address"] == instance.address()
        assert ADDRESS.match(shown["address"])


def test_status_text_table_and_detail(local: Cluster) -> None:
    applied_api(local)

    table = local.run_until(lambda out: "2/2" in out, "status", "--runtime", "process")
    detail = local.run("status", "api", "--runtime", "process")

    assert table.returncode == 0 and detail.returncode == 0, table.stderr + detail.stderr
    header = next(line for line in table.stdout.splitlines() if "SERVICE" in line)
    assert "READY" in header.split()
    row = next(line for line in table.stdout.splitlines() if line.startswith("api "))
    assert "2/2" in row and "Progressing" in row
    assert "last error: api: analysis failed" in table.stdout
    # What a service that is not Healthy is at (or waits for), under the table.
    assert "api: step 1: weight 25%" in table.stdout.splitlines()
    assert "REPLICA" in detail.stdout and "ADDRESS" in detail.stdout
    addresses = re.findall(ADDRESS.pattern.strip("^$"), detail.stdout)
    assert len(addresses) == 2
    # No daemon holds the state: said, since nothing heals meanwhile; with one, not said.
    assert "no daemon holds this state" in table.stdout
    # ...nor a proxy (as after `gitorch apply`): the endpoints are down, said so, rather
    # than "the proxy keeps serving".
    assert "no proxy serves their endpoints" in " ".join(table.stdout.split())
    plane = json.loads(local.run("status", "--format", "json").stdout)["controlPlane"]
    assert plane["daemon"] is None and plane["dataPlane"] is False
    with DaemonLock(local.state):
        held = local.run("status", "--runtime", "process")
        doc = json.loads(local.run("status", "--format", "json").stdout)["controlPlane"]
    assert "no daemon" not in held.stdout
    assert doc["daemon"]["pid"] == os.getpid()


def test_status_names_the_revision_being_rolled_out_beside_the_last_applied(
    local: Cluster,
) -> None:
    api = load_services(api_manifest())["api"]
    start_replicas(local.runtime, api, local.name, 1, revision=SHA_1, digest="old")
    start_replicas(local.runtime, api, local.name, 1, first=2, revision=SHA_2)
    with StateStore(local.state) as store:
        record_rollout(store, api, revision=SHA_2, phase=RolloutPhase.PROGRESSING)
        record_applied_revision(store, SHA_1, ["api"])
        store.record_revision(SHA_2, services=["api"])  # in progress
    data = json.loads(local.run("status", "--runtime", "process", "--format", "json").stdout)
    assert (data["revision"], data["applying"]) == (SHA_1, SHA_2)
    text = local.run("status", "--runtime", "process").stdout
    assert f"revision {SHA_1[:12]} (applying {SHA_2[:12]})" in text.splitlines()[0]


def _columns(header: str, names: tuple[str, ...]) -> list[int]:
    return [header.index(name) for name in names]


def test_status_wide_lists_every_replica_in_aligned_columns(local: Cluster) -> None:
    applied_api(local)

    plain = local.run("status", "--runtime", "process")
    wide = local.run("status", "--wide", "--runtime", "process")

    assert plain.returncode == 0 and wide.returncode == 0, plain.stderr + wide.stderr
    assert "REPLICA" not in plain.stdout, "the default table has a line per service"
    lines = wide.stdout.splitlines()
    # The services' table: each value starts under its header (the plain writer pads).
    header = next(line for line in lines if line.startswith("SERVICE  REVISION"))
    starts = _columns(header, ("SERVICE", "REVISION", "PHASE", "READY", "UPDATED", "ENDPOINT"))
    row = lines[lines.index(header) + 1]
    assert row.startswith("api ") and [row[i - 1] == " " for i in starts[1:]] == [True] * 5, row
    assert row[starts[2] :].startswith("Progressing") and row[starts[3] :].startswith("2/2"), row
    # ... then every replica of every service, under the detail's columns.
    replicas_header = next(line for line in lines if line.startswith("SERVICE  REPLICA"))
    at = _columns(replicas_header, ("REPLICA", "NODE", "STATE", "READY", "ADDRESS"))
    rows = lines[lines.index(replicas_header) + 1 :][:2]
    doc = json.loads(local.run("status", "--runtime", "process", "--format", "json").stdout)
    replicas = sorted(i["replica"] for i in doc["services"][0]["instances"])
    assert [r.split()[:2] for r in rows] == [["api", r] for r in replicas], rows
    for replica_row in rows:
        assert replica_row[at[2] :].startswith("running"), replica_row
        assert ADDRESS.match(replica_row[at[4] :].split()[0]), replica_row


def _status_with_slot_2_backing_off(local: Cluster, **record: Any) -> list[str]:
    """Status lines of api rolling out (1/2 updated) with its slot 2 in back-off."""
    api = load_services(api_manifest())["api"]
    with StateStore(local.state) as store:
        record_rollout(store, api, phase=RolloutPhase.PROGRESSING, message="1/2 updated")
        store.record_backoff(
            BackoffRecord(service="api", slot=2, last_restart_at=time.time(), **record)
        )
    return local.run("status", "--runtime", "process").stdout.splitlines()


def test_status_says_which_replicas_crash_loop_and_where_to_read_why(local: Cluster) -> None:
    lines = _status_with_slot_2_backing_off(local, restarts=4, last_exit_code=2, reason="exit 2")
    assert "api: 1/2 updated" in lines
    assert any(
        re.fullmatch(r"api-2: back-off \d+s left, 4 restart\(s\), last: exit 2", line)
        for line in lines
    ), lines
    assert "why they exited: gitorch logs api --previous" in lines


def test_status_says_failed_starts_are_failed_starts(local: Cluster) -> None:
    """A replica that never ran did not restart, and has no logs to read."""
    lines = _status_with_slot_2_backing_off(
        local,
        restarts=3,
        template=load_services(api_manifest())["api"].template_digest,
        reason="start failed: no such file: /nonexistent/bin/x",
    )
    assert any(
        re.fullmatch(
            r"api-2: back-off \d+s left, 3 failed start\(s\), "
            r"last: start failed: no such file: /nonexistent/bin/x",
            line,
        )
        for line in lines
    ), lines
    assert not any("restart" in line or "why they exited" in line for line in lines), lines


def test_status_says_why_a_service_rolled_back(local: Cluster) -> None:
    api = load_services(api_manifest())["api"]
    with StateStore(local.state) as store:
        record_rollout(
            store,
            api,
            phase=RolloutPhase.ROLLED_BACK,
            last_error="progress deadline exceeded",
            message="2/2 updated",  # the rollback's own progress: not what a reader needs
        )
    lines = local.run("status", "--runtime", "process").stdout.splitlines()
    assert "api: rolled back: progress deadline exceeded" in lines, lines
    assert "api: 2/2 updated" not in lines


def test_status_of_one_service_and_of_an_unknown_one(local: Cluster) -> None:
    api = load_services(api_manifest())["api"]
    with StateStore(local.state) as store:
        record_rollout(store, api)
        record_rollout(store, load_services(api_manifest("other", 1))["other"])

    one = local.run("status", "api", "--runtime", "process", "--format", "json")
    unknown = local.run("status", "nope", "--runtime", "process")

    assert one.returncode == 0
    assert [s["name"] for s in json.loads(one.stdout)["services"]] == ["api"]
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    lines = unknown.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]
    assert "Traceback" not in unknown.stderr


def test_nodes_json_shows_capacity_allocation_and_condition(local: Cluster) -> None:
    applied_api(local)  # two replicas requesting 100m / 32Mi each
    orphan = load_services(service_yaml("orphan", replicas=1, command=["/bin/sleep", "600"]))
    start_replicas(local.runtime, orphan["orphan"], local.name)  # no record: no requests

    done = local.run("nodes", "--runtime", "process", "--format", "json")

    assert done.returncode == 0, done.stderr
    (node,) = json.loads(done.stdout)["nodes"]
    assert node["name"] == local.node and node["driver"] == "process"
    assert node["condition"] == "Ready"
    assert node["capacity"]["cpu"] == str(len(os.sched_getaffinity(0)))
    assert node["capacity"]["memory"] not in ("0", "")
    assert node["allocated"] == {"cpu": "200m", "memory": "64Mi"}
    assert node["replicas"] == 3


def test_registered_nodes_one_of_them_down(local: Cluster) -> None:
    """Nodes come from the store once apply registered them; a dead engine is NotReady
    in both commands and the other node is still listed with its replicas."""
    applied_api(local)
    endpoint = closed_tcp_endpoint()
    with StateStore(local.state) as store:
        store.register_node(local.node, "process")
        store.register_node("remote", "docker", endpoint=endpoint)

    nodes = local.run("nodes", "--format", "json")
    status = local.run("status", "--format", "json")

    assert nodes.returncode == 0 and status.returncode == 0, nodes.stderr + status.stderr
    by_name = {n["name"]: n for n in json.loads(nodes.stdout)["nodes"]}
    assert by_name[local.node]["condition"] == "Ready"
    assert by_name[local.node]["replicas"] == 2
    assert by_name["remote"]["condition"] == "NotReady" and by_name["remote"]["message"]
    data = json.loads(status.stdout)
    assert {n["name"]: n["ready"] for n in data["nodes"]} == {local.node: True, "remote": False}
    assert len(data["services"][0]["instances"]) == 2


@pytest.mark.docker
def test_status_with_the_docker_runtime(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from gitorch.runtime.docker import DockerRuntime

    api_image: str = request.getfixturevalue("example_images")  # FAILS without an engine

    state = tmp_path / "state"
    node = local_node_name()
    cluster = Cluster(state, DockerRuntime(node, DOCKER_ENDPOINT, timeout=15.0), node)
    manifest = service_yaml(
        "shop", replicas=1, image=api_image, probe_path="/cgi-bin/healthz", expose_port=18002
    )
    shop = load_services(manifest)["shop"]
    try:
        (instance,) = start_replicas(cluster.runtime, shop, cluster.name)
        with StateStore(state) as store:
            record_rollout(store, shop)
            record_applied_revision(store, SHA_1, ["shop"])
        cluster.wait_until_answering()

        done = cluster.run("status", "--runtime", "docker", "--format", "json")
        nodes = cluster.run("nodes", "--runtime", "docker", "--format", "json")
    finally:
        remove_cluster(cluster.runtime, cluster.name)

    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    assert data["revision"] == SHA_1
    assert [(n["name"], n["driver"], n["ready"]) for n in data["nodes"]] == [(node, "docker", True)]
    (svc,) = data["services"]
    assert svc["replicas"]["desired"] == 1
    assert (svc["replicas"]["ready"], svc["replicas"]["updated"]) == (1, 1)
    (shown,) = svc["instances"]
    assert shown["id"] == instance.id and shown["revision"] == SHA_1 and shown["ready"] is True
    assert shown["address"] == instance.address() and ADDRESS.match(shown["address"])
    (row,) = json.loads(nodes.stdout)["nodes"]
    assert row["condition"] == "Ready" and row["allocated"] == {"cpu": "100m", "memory": "32Mi"}


def _stub_api(answer: Callable[[str], tuple[int, bytes, dict[str, str]]]) -> ThreadingHTTPServer:
    """An HTTP server on a free local port, serving in a thread: each GET is answered by
    ``answer(path)`` -> (status, body, headers). ``shutdown()`` it after."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status, body, headers = answer(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_status_from_a_daemon_api_server(tmp_path: Path) -> None:
    """`status --server` renders what a daemon's GET /api/v1/status answers."""
    document = {
        "cluster": "c1",
        "revision": "a" * 40,
        "lastError": None,
        "nodes": [{"name": "n1", "driver": "process", "ready": True, "message": ""}],
        "services": [
            {
                "name": "api",
                "revision": "a" * 40,
                "replicas": {"desired": 2, "running": 2, "ready": 2, "updated": 2},
                "rollout": {"phase": "Healthy", "step": None, "weight": 100, "lastError": None},
                "endpoint": {"port": 8001, "protocol": "http"},
                "instances": [],
            }
        ],
    }

    def answer(path: str) -> tuple[int, bytes, dict[str, str]]:
        return 200 if path == "/api/v1/status" else 404, json.dumps(document).encode(), {}

    server = _stub_api(answer)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        got = subprocess.run(
            [sys.executable, "-m", "gitorch", "status", "--server", url, "--format", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout) == document
        text = subprocess.run(
            [sys.executable, "-m", "gitorch", "status", "api", "--server", url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert text.returncode == 0 and "api" in text.stdout and "Healthy" in text.stdout
        missing = subprocess.run(
            [sys.executable, "-m", "gitorch", "status", "nope", "--server", url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert missing.returncode == 1 and "no service named 'nope'" in missing.stderr
    finally:
        server.shutdown()


def test_a_local_status_takes_the_answer_of_the_daemon_its_state_names(local: Cluster) -> None:
    """A local status asks the daemon ``daemon.json`` names and writes its ``--format
    json`` answer as it comes; an answer from another process on that URL (its
    ``Gitorch-Pid`` is not the named pid: a daemon killed -9, its port reused) is not
    taken: status observes by itself."""
    applied_api(local)
    answering = {"pid": str(os.getpid())}
    served: list[str] = []

    def answer(path: str) -> tuple[int, bytes, dict[str, str]]:
        served.append(path)
        body = b'{\n  "services": [],\n  "from": "the daemon"\n}\n'
        return 200, body, {"Gitorch-Pid": answering["pid"]}

    server = _stub_api(answer)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        # This test's process stands for the daemon: its pid is alive.
        (local.state / "daemon.json").write_text(json.dumps({"pid": os.getpid(), "url": url}))
        asked = local.run("status", "--format", "json")
        assert asked.returncode == 0, asked.stderr
        assert asked.stdout == '{\n  "services": [],\n  "from": "the daemon"\n}\n'
        assert served == ["/api/v1/status?indent=2"]
        answering["pid"] = str(os.getpid() + 1)
        observed = local.run("status", "--format", "json")
        assert observed.returncode == 0, observed.stderr
        assert [s["name"] for s in json.loads(observed.stdout)["services"]] == ["api"]
        text = local.run("status")
        assert text.returncode == 0 and "api" in text.stdout, text.stdout
    finally:
        server.shutdown()
