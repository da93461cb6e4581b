"""The NodePool sync against a real state store and real provider executables (small
shell scripts written by the test): what a provider that fails, lies or knows more than
the record does to the pool. The private-engine provider runs under a real daemon in
``tests/multinode/test_node_pool.py``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitorch.apply.nodepools import NodePoolScaler
from gitorch.live.model import LiveState
from gitorch.manifests import ManifestLoader
from gitorch.manifests.model import DesiredState
from gitorch.state import NodePoolRecord, StateStore


class _File:
    def __init__(self, path: str, text: str) -> None:
        self.path, self.data = path, text.encode()
        self.blob_id = hashlib.sha1(self.data).hexdigest()


def desired(command: list[str], *, low: int = 0) -> DesiredState:
    text = f"""apiVersion: gitorch.dev/v1
kind: NodePool
metadata: {{name: workers}}
spec:
  minNodes: {low}
  maxNodes: 3
  template:
    capacity: {{cpu: "1", memory: 1Gi}}
  provider: {{command: {json.dumps(command)}, timeout: 5s}}
"""
    result = ManifestLoader().load([_File("pool.yaml", text)], revision="r1")
    assert result.state is not None, [str(d) for d in result.diagnostics]
    return result.state


def script(folder: Path, body: str) -> list[str]:
    """A provider: ``body`` runs with the verb in $1 and the request on stdin."""
    path = folder / "provider"
    path.write_text("#!/bin/sh\nset -e\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return [str(path)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


def test_a_provider_that_does_not_exist_is_the_pools_error(store: StateStore) -> None:
    state = desired(["/nonexistent/make-node"], low=1)
    [result] = NodePoolScaler(store).sync(state, LiveState.empty(), (), frozenset())
    assert result.record.nodes == ()
    assert "NodePool workers: provider '/nonexistent/make-node' does not exist" in result.error
    stored = store.get_node_pool("workers")
    assert stored is not None and stored.error == result.error


def test_an_answer_that_is_not_a_docker_endpoint_makes_no_node(
    store: StateStore, tmp_path: Path
) -> None:
    command = script(
        tmp_path,
        'case "$1" in\n'
        "  list) echo '[]' ;;\n"
        '  create) echo \'{"endpoint": "http://nope"}\' ;;\n'
        "esac\n",
    )
    [result] = NodePoolScaler(store).sync(
        desired(command, low=1), LiveState.empty(), (), frozenset()
    )
    assert result.decision.create == 1
    assert result.record.nodes == ()
    assert "answered endpoint 'http://nope', not a Docker endpoint" in result.error
    assert store.list_events(kind="nodepool.scaled-up") == []


def test_a_failing_call_names_its_exit_and_stderr(store: StateStore, tmp_path: Path) -> None:
    command = script(tmp_path, 'echo "quota exceeded in zone b" >&2\nexit 3\n')
    [result] = NodePoolScaler(store).sync(
        desired(command, low=1), LiveState.empty(), (), frozenset()
    )
    assert "provider list exited 3: quota exceeded in zone b" in result.error
    assert "provider create exited 3: quota exceeded in zone b" in result.error


def test_a_made_node_is_recorded_and_audited(store: StateStore, tmp_path: Path) -> None:
    made = tmp_path / "made"
    command = script(
        tmp_path,
        'case "$1" in\n'
        "  list) echo '[]' ;;\n"
        f'  create) cat > {made}; echo \'{{"endpoint": "unix:///run/n.sock"}}\' ;;\n'
        "esac\n",
    )
    [result] = NodePoolScaler(store).sync(
        desired(command, low=1), LiveState.empty(), (), frozenset()
    )
    assert result.error == ""
    [node] = result.record.nodes
    assert node["name"].startswith("workers-") and node["endpoint"] == "unix:///run/n.sock"
    assert node["cpu"] == 1000 and node["memory"] == 1024**3 and node["state"] == "ready"
    request = json.loads(made.read_text())
    assert request["pool"] == "workers" and request["name"] == node["name"]
    assert request["template"]["capacity"] == {"cpu": "1", "memory": "1Gi"}
    [event] = store.list_events(kind="nodepool.scaled-up")
    assert event.data["from"] == 0 and event.data["to"] == 1
    assert "below minNodes 1" in event.data["reason"]


def test_listed_nodes_are_adopted_and_vanished_ones_forgotten(
    store: StateStore, tmp_path: Path
) -> None:
    command = script(
        tmp_path,
        'case "$1" in\n'
        '  list) echo \'[{"name": "workers-bbbbbb", "endpoint": "unix:///run/b.sock"}]\' ;;\n'
        "esac\n",
    )
    store.save_node_pool(
        NodePoolRecord(
            "workers",
            nodes=({"name": "workers-aaaaaa", "endpoint": "unix:///run/a.sock", "state": "ready"},),
            provider={"command": command, "timeout": 5.0},
        )
    )
    [result] = NodePoolScaler(store).sync(desired(command), LiveState.empty(), (), frozenset())
    assert [n["name"] for n in result.record.nodes] == ["workers-bbbbbb"]
    assert [e.data["node"] for e in store.list_events(kind="nodepool.node-adopted")] == [
        "workers-bbbbbb"
    ]
    assert [e.data["node"] for e in store.list_events(kind="nodepool.node-vanished")] == [
        "workers-aaaaaa"
    ]
