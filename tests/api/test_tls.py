"""The API over TLS (``--tls-cert/--tls-key``): certificates made by the real openssl, the
server in process and a real daemon, and ``gitorch status --server https://... --ca-file``."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import StubHandle, request
from data_plane_helpers import stop_data_plane
from reconciler_helpers import DaemonProc, cli_env, free_port, gitorch
from tls_certs import Certs, make_certs

from gitorch.api.auth import ExposedApiError, TokenSet
from gitorch.api.server import ApiServer
from gitorch.api.tls import TlsConfigError, TlsFiles, client_context, server_context
from gitorch.errors import ConfigError

TOKEN = "tls-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def tls_api(handle: StubHandle, certs: Certs) -> Iterator[ApiServer]:
    context = server_context(TlsFiles(certs.cert, certs.key))
    with ApiServer(handle, "127.0.0.1:0", tls=context) as api:
        yield api


def test_https_with_the_ca_answers(tls_api: ApiServer, certs: Certs) -> None:
    assert tls_api.url.startswith("https://127.0.0.1:")
    reply = request(tls_api.address, "GET", "/api/v1/status", tls=client_context(certs.ca))
    assert reply.status == 200 and reply.json()["services"][0]["name"] == "web"


def test_a_client_that_trusts_another_ca_refuses_the_server(
    tls_api: ApiServer, certs: Certs
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        request(tls_api.address, "GET", "/healthz", tls=client_context(certs.other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        request(tls_api.address, "GET", "/healthz", tls=client_context(None))  # system CAs


def test_plain_http_and_silent_clients_do_not_stop_the_server(
    tls_api: ApiServer, certs: Certs
) -> None:
    # Plain HTTP to the TLS port: no answer in clear, the connection is dropped.
    with pytest.raises((ConnectionError, OSError)):
        reply = request(tls_api.address, "GET", "/healthz", timeout=5)
        assert reply.status != 200
    # A client that connects and says nothing holds its own thread, not the accept loop.
    silent = socket.create_connection(tls_api.address, timeout=5)
    try:
        reply = request(tls_api.address, "GET", "/healthz", tls=client_context(certs.ca))
        assert reply.status == 200
    finally:
        silent.close()


def test_tokens_without_tls_beyond_loopback_are_refused_with_tls_allowed(
    handle: StubHandle, certs: Certs
) -> None:
    tokens = TokenSet.from_lines([f"ops:read:{TOKEN}"])
    with pytest.raises(ExposedApiError) as caught:
        ApiServer(handle, "0.0.0.0:0", tokens=tokens)
    assert "without TLS" in caught.value.message
    assert any("--tls-cert" in line for line in caught.value.detail)
    context = server_context(TlsFiles(certs.cert, certs.key))
    with ApiServer(handle, "0.0.0.0:0", tokens=tokens, tls=context) as api:
        port = api.address[1]
        reply = request(
            ("127.0.0.1", port),
            "GET",
            "/api/v1/status",
            headers={"Authorization": f"Bearer {TOKEN}"},
            tls=client_context(certs.ca),
        )
        assert reply.status == 200


def test_unusable_certificates_are_one_clear_error(certs: Certs, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(certs.key.read_bytes())
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match=r"accessible by others \(mode 0644\).*chmod 600"):
        server_context(TlsFiles(certs.cert, loose))
    with pytest.raises(TlsConfigError, match="no such file"):
        server_context(TlsFiles(tmp_path / "missing.pem", certs.key))
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes((certs.ca.parent / "other-ca.key").read_bytes())
    wrong.chmod(0o600)
    with pytest.raises(TlsConfigError, match="cannot be used"):
        server_context(TlsFiles(certs.cert, wrong))


# -- a real daemon and the real CLI --------------------------------------------------------


def test_status_and_history_over_https_with_a_ca_file(tmp_path: Path, certs: Certs) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.name=A", "-c", "user.email=a@x", "commit", "-q", "--allow-empty",
         "-m", "empty"],
        cwd=repo,
        check=True,
    )  # fmt: skip
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops:read:{TOKEN}\n", encoding="utf-8")
    tokens.chmod(0o600)
    daemon = DaemonProc(
        str(repo),
        tmp_path / "state",
        "process",
        extra=(
            "--api-token-file", str(tokens),
            "--tls-cert", str(certs.cert),
            "--tls-key", str(certs.key),
        ),
        ca_file=certs.ca,
    )  # fmt: skip
    try:
        url = f"https://127.0.0.1:{daemon.port}"
        token = tmp_path / "client-token"
        token.write_text(TOKEN + "\n", encoding="utf-8")
        token.chmod(0o600)
        common = ("--server", url, "--token-file", str(token))
        done = gitorch("status", *common, "--ca-file", str(certs.ca), "--format", "json",
                       cwd=tmp_path)  # fmt: skip
        assert done.code == 0, done.stderr
        assert done.json()["services"] == []
        done = gitorch("history", *common, "--ca-file", str(certs.ca), cwd=tmp_path)
        assert done.code == 0, done.stderr
        # $GITORCH_CA_FILE works as --ca-file does.
        env = {**cli_env(), "GITORCH_CA_FILE": str(certs.ca)}
        ran = subprocess.run(
            [sys.executable, "-m", "gitorch", "status", *common],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        # Without the CA: refused, in one line that says what to do, never a traceback.
        done = gitorch("status", *common, cwd=tmp_path)
        assert done.code == 1
        assert f"the daemon at {url} is not trusted" in done.stderr
        assert "--ca-file" in done.stderr and "Traceback" not in done.stderr
        # Plain HTTP to the TLS port gets no answer in clear.
        done = gitorch("status", "--server", f"http://127.0.0.1:{daemon.port}",
                       "--token-file", str(token), cwd=tmp_path)  # fmt: skip
        assert done.code == 1 and "Traceback" not in done.stderr
        assert TOKEN not in done.stderr + done.stdout
    finally:
        daemon.stop()
        stop_data_plane(tmp_path / "state")  # it outlives the daemon by design


def test_daemon_refuses_tokens_in_clear_beyond_loopback(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops:read:{TOKEN}\n", encoding="utf-8")
    tokens.chmod(0o600)
    done = subprocess.run(
        [sys.executable, "-m", "gitorch", "daemon", "--repo", str(tmp_path), "--state",
         str(tmp_path / "state"), "--listen", f"0.0.0.0:{free_port()}",
         "--api-token-file", str(tokens)],
        capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "refusing to serve the API on 0.0.0.0 without TLS" in done.stderr
    assert "--tls-cert" in done.stderr and "--api-insecure" in done.stderr
    assert not (tmp_path / "state").exists()
    assert os.stat(tokens).st_mode & 0o777 == 0o600
