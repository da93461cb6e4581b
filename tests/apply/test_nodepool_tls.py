"""A NodePool whose template asks TLS (``template.runtime.tls``): its nodes are reached
over TLS and nothing else. Against a real engine the shipped provider makes
(examples/nodepool/local-engines --tls-ca: a private dockerd serving its API on tcp with
``--tlsverify``), a listener that records what a plain-text endpoint is sent, and
providers that answer endpoints TLS cannot be spoken on."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from local_engines_helpers import PROVIDER, delete_all
from provider_helpers import fixed_endpoint_provider, pool_state
from tls_certs import ClientCA, make_client_ca

from gitorch.apply.nodepools import NodePoolScaler
from gitorch.live.inventory import open_runtimes, pool_targets
from gitorch.live.model import LiveState
from gitorch.manifests.model import DesiredState, TLSConfig
from gitorch.state import StateStore

TLS = {"caCert": "ca.pem", "clientCert": "client.pem", "clientKey": "client-key.pem"}


def desired(command: list[str], tls: dict[str, Any] | None = TLS) -> DesiredState:
    runtime: dict[str, Any] = {"driver": "docker"}
    if tls is not None:
        runtime["tls"] = tls
    return pool_state("secure", command, min_nodes=1, max_nodes=2, runtime=runtime)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore(tmp_path / "state") as opened:
        yield opened


@pytest.fixture
def certs(tmp_path: Path) -> ClientCA:
    return make_client_ca(tmp_path / "secrets")


def test_the_template_tls_is_parsed_with_verify_on_by_default() -> None:
    pool = desired(["/bin/true"]).node_pools["secure"]
    assert pool.tls == TLSConfig("ca.pem", "client.pem", "client-key.pem", verify=True)
    assert pool.canonical["spec"]["template"]["runtime"]["tls"]["verify"] is True
    off = desired(["/bin/true"], tls={**TLS, "verify": False}).node_pools["secure"]
    assert off.tls is not None and off.tls.verify is False
    assert desired(["/bin/true"], tls=None).node_pools["secure"].tls is None


@pytest.mark.docker
@pytest.mark.slow
def test_a_pool_node_is_reached_over_tls_with_the_templates_files(
    store: StateStore, certs: ClientCA, tmp_path: Path
) -> None:
    """The provider makes a private engine that serves only TLS with client certificates
    on tcp; the pool's node gets the template's TLS and answers with it; without the
    client certificate, or with a CA that did not sign the engine, it is refused."""
    engines = tmp_path / "engines"
    command = [str(PROVIDER), "--root", str(engines), "--tls-ca", str(certs.folder)]
    try:
        [result] = NodePoolScaler(store).sync(desired(command), LiveState.empty(), (), frozenset())
        assert result.error == ""
        [node] = result.record.nodes
        assert node["endpoint"].startswith("tcp://127.0.0.1:"), node
        assert node["tls"] == {**TLS, "verify": True}

        [target] = pool_targets(store.list_node_pools())
        assert target.tls == TLSConfig("ca.pem", "client.pem", "client-key.pem", True)
        runtime = open_runtimes([target], tmp_path / "rt", secrets_dir=certs.folder)[target.name]
        info = runtime.node_info()
        assert info.ready, info.message
        assert info.transport == "tls (verified)"

        # The engine really demands TLS with a client certificate: the same node
        # without one, or trusting another CA, is refused (and says why).
        bare = replace(target, tls=TLSConfig("ca.pem", None, None, True))
        refused = open_runtimes([bare], tmp_path / "rt2", secrets_dir=certs.folder)
        info = refused[target.name].node_info()
        assert not info.ready and "TLS handshake failed" in info.message, info.message
        strange = replace(target, tls=TLSConfig("other-ca.pem", "client.pem", "client-key.pem"))
        untrusted = open_runtimes([strange], tmp_path / "rt3", secrets_dir=certs.folder)
        info = untrusted[target.name].node_info()
        assert not info.ready and "was not verified with the node's CA" in info.message
    finally:
        delete_all(engines, "secure")


class _Recorder:
    """A tcp listener that keeps the first bytes each connection sends (and closes it)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    self.received.append(conn.recv(4096))

    def close(self) -> None:
        self.sock.close()


def test_a_plain_tcp_endpoint_is_spoken_to_in_tls_only(
    store: StateStore, certs: ClientCA, tmp_path: Path
) -> None:
    """A provider that answers a tcp:// endpoint serving plain text: the node is
    NotReady (a TLS handshake that failed), and all it was ever sent is TLS handshakes,
    never an HTTP request."""
    recorder = _Recorder()
    try:
        command = fixed_endpoint_provider(tmp_path, f"tcp://127.0.0.1:{recorder.port}")
        [result] = NodePoolScaler(store).sync(desired(command), LiveState.empty(), (), frozenset())
        assert result.error == "" and len(result.record.nodes) == 1
        [target] = pool_targets(store.list_node_pools())
        runtime = open_runtimes([target], tmp_path / "rt", secrets_dir=certs.folder)[target.name]
        info = runtime.node_info()
        assert not info.ready and "TLS" in info.message, info.message
        assert recorder.received, "gitorch never called the node"
        for first in recorder.received:
            assert first[:1] == b"\x16", first[:40]  # a TLS handshake record
            assert b"HTTP/1" not in first and b"/_ping" not in first, first[:80]
    finally:
        recorder.close()


@pytest.mark.parametrize("endpoint", ["unix:///var/run/docker.sock", "ssh://root@127.0.0.1"])
def test_an_endpoint_tls_cannot_be_spoken_on_makes_no_node(
    store: StateStore, tmp_path: Path, endpoint: str
) -> None:
    """The template asks TLS and the provider answers a unix or ssh endpoint: refused
    with the pool's error, the node given back (delete), none recorded."""
    command = fixed_endpoint_provider(tmp_path, endpoint)
    [result] = NodePoolScaler(store).sync(desired(command), LiveState.empty(), (), frozenset())
    assert result.record.nodes == ()
    assert f"provider create answered endpoint {endpoint!r}" in result.error, result.error
    assert "the template asks TLS (runtime.tls)" in result.error
    assert (tmp_path / "verbs").read_text().split() == ["list", "create", "delete"]
    assert pool_targets(store.list_node_pools()) == []


def test_a_listed_node_tls_cannot_be_spoken_on_is_not_adopted(
    store: StateStore, tmp_path: Path
) -> None:
    """A node the provider lists (made before a crash) at a unix endpoint, for a pool
    that asks TLS: not adopted, and the pool says why."""
    path = tmp_path / "provider"
    path.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  list) echo \'[{"name": "secure-abc123", "endpoint": "unix:///run/x.sock"}]\' ;;\n'
        "  *) exit 3 ;;\n"
        "esac\n",
        encoding="utf-8",
    )
    path.chmod(0o755)
    state = desired([str(path)])
    pool = state.node_pools["secure"]
    state = replace(state, node_pools={"secure": replace(pool, min_nodes=0)})
    [result] = NodePoolScaler(store).sync(state, LiveState.empty(), (), frozenset())
    assert result.record.nodes == ()
    assert "provider list answered endpoint 'unix:///run/x.sock' for secure-abc123" in (
        result.error
    )


def test_a_node_adopted_after_a_crash_gets_the_templates_tls(
    store: StateStore, tmp_path: Path
) -> None:
    """A daemon killed between the provider's create and its record: the next sync finds
    the node in the provider's list and adopts it with the template's TLS (never as a
    plain-text node)."""
    path = tmp_path / "provider"
    path.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  list) echo \'[{"name": "secure-abc123", "endpoint": "tcp://10.0.0.7:2376"}]\' ;;\n'
        "  *) exit 3 ;;\n"
        "esac\n",
        encoding="utf-8",
    )
    path.chmod(0o755)
    [result] = NodePoolScaler(store).sync(desired([str(path)]), LiveState.empty(), (), frozenset())
    [node] = result.record.nodes
    assert node["name"] == "secure-abc123" and node["tls"] == {**TLS, "verify": True}
    [target] = pool_targets(store.list_node_pools())
    assert target.tls == TLSConfig("ca.pem", "client.pem", "client-key.pem", True)
