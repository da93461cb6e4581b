"""Bearer-token auth of the API in-process: the token file, the rules per route, the
refusal of an open API beyond loopback, and that no token reaches a log line."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import SECRET, StubHandle, request

from gitorch.api.auth import (
    ExposedApiError,
    Role,
    TokenFileError,
    TokenSet,
    authorize,
    bearer_token,
    is_loopback,
)
from gitorch.api.server import ApiServer
from gitorch.api.webhook import WebhookSecret
from gitorch.commands.remote import read_token_file

READ = "r3ad-0nly-t0ken-aaaaaaaaaaaaaaaa"
WRITE = "wr1te-t0ken-bbbbbbbbbbbbbbbbbbbb"
BARE = "bare-t0ken-cccccccccccccccccccccc"
LINES = [
    "# gitorch API tokens",
    "",
    f"grafana:read:{READ}",
    f"  ci-bot : write : {WRITE}  ",
    BARE,
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens() -> TokenSet:
    return TokenSet.from_lines(LINES)


@pytest.fixture
def authed(handle: StubHandle, tokens: TokenSet) -> Iterator[ApiServer]:
    api = ApiServer(handle, "127.0.0.1:0", webhook_secret=WebhookSecret(SECRET), tokens=tokens)
    api.start()
    try:
        yield api
    finally:
        api.stop()


# -- the token file --------------------------------------------------------------------


def test_token_lines_give_names_and_roles(tokens: TokenSet) -> None:
    assert [(t.name, t.role) for t in tokens.tokens] == [
        ("grafana", Role.READ),
        ("ci-bot", Role.WRITE),
        ("line-5", Role.WRITE),  # a bare token: write, named by its line
    ]
    assert tokens.match(READ) is tokens.tokens[0]
    assert tokens.match(WRITE) is tokens.tokens[1]
    assert tokens.match(BARE) is tokens.tokens[2]
    assert tokens.match(READ + "x") is None
    assert tokens.match(READ[:-1]) is None
    assert tokens.match("") is None
    # Only digests are kept: no repr shows a value.
    assert READ not in repr(tokens) and WRITE not in repr(tokens)
    assert TokenSet.from_lines([f"read:{READ}"]).tokens[0].role is Role.READ


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], "holds no token"),
        (["# only a comment"], "holds no token"),
        (["short"], "line 1: a token is 16-512 characters"),
        ([f"admin:{READ}"], "line 1: the role must be read or write, not 'admin'"),
        ([f"a:b:write:{READ}"], "line 1: expected TOKEN, ROLE:TOKEN or NAME:ROLE:TOKEN"),
        ([f"bad name:read:{READ}"], "line 1: a token name is 1-64 characters"),
        ([f"x:read:{READ}", f"x:write:{WRITE}"], "line 2: the name 'x' is used twice"),
        ([f"x:read:{READ}", f"y:write:{READ}"], "line 2: this token is listed twice"),
        ([f"x:read:{READ[:-1]}\u00e9"], "line 1: a token is 16-512 characters"),
    ],
)
def test_malformed_token_files_are_refused_by_line(lines: list[str], expected: str) -> None:
    with pytest.raises(TokenFileError) as caught:
        TokenSet.from_lines(lines)
    assert expected in caught.value.message
    # A message names the line, never what is on it.
    assert READ[:-1] not in caught.value.message and WRITE not in caught.value.message


def test_token_file_mode_is_checked_like_ssh(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    for mode in (0o644, 0o604, 0o660, 0o666):
        path.chmod(mode)
        with pytest.raises(TokenFileError) as caught:
            TokenSet.from_file(path)
        assert f"(mode {mode:04o})" in caught.value.message
        assert f"chmod 600 {path}" in caught.value.message
    for mode in (0o600, 0o400, 0o640):  # the group may read (a gitorch group), not write
        path.chmod(mode)
        assert len(TokenSet.from_file(path).tokens) == 3
    with pytest.raises(TokenFileError, match="cannot read the API token file"):
        TokenSet.from_file(tmp_path / "missing")
    with pytest.raises(TokenFileError, match="is not a regular file"):
        TokenSet.from_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(TokenFileError, match="is not a regular file"):
        TokenSet.from_file(fifo)  # refused at once, never blocks on the open


def test_client_token_file_takes_the_last_field_of_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"# mine\n\nci-bot:write:{WRITE}\nignored\n", encoding="utf-8")
    path.chmod(0o600)
    assert read_token_file(path) == WRITE
    path.write_text(f"{READ}\n", encoding="utf-8")
    assert read_token_file(path) == READ
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match="chmod 600"):
        read_token_file(path)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"Bearer {READ}", READ),
        (f"bearer   {READ} ", READ),
        ("Bearer ", None),
        (f"Basic {READ}", None),
        (READ, None),
    ],
)
def test_bearer_header_parsing(value: str, expected: str | None) -> None:
    assert bearer_token({"authorization": value}) == expected
    assert bearer_token({}) is None


def test_rules_per_route(tokens: TokenSet) -> None:
    def outcome(method: str, route: str, token: str | None) -> object:
        headers = {"authorization": f"Bearer {token}"} if token else {}  # lower-case names
        decision = authorize(tokens, method, route, headers)
        return getattr(decision, "status", "ok")

    assert outcome("GET", "/healthz", None) == "ok"
    assert outcome("POST", "/api/v1/webhook", None) == "ok"
    for route in ("/api/v1/status", "/api/v1/history", "/api/v1/plan", "/metrics"):
        assert outcome("GET", route, None) == 401
        assert outcome("GET", route, READ) == "ok"
        assert outcome("GET", route, WRITE) == "ok"
    for route in ("/api/v1/reconcile", "/api/v1/services/{name}/{action}"):
        assert outcome("POST", route, None) == 401
        assert outcome("POST", route, "x" * 32) == 401
        assert outcome("POST", route, READ) == 403
        assert outcome("POST", route, WRITE) == "ok"
        assert outcome("POST", route, BARE) == "ok"
    assert authorize(None, "POST", "/api/v1/reconcile", {}) == authorize(
        tokens, "GET", "/healthz", {}
    )


# -- a real server with tokens ---------------------------------------------------------


def test_missing_or_wrong_token_is_401_with_a_challenge(authed: ApiServer) -> None:
    for headers in ({}, bearer("wrong-token-0123456789"), {"Authorization": f"Basic {READ}"}):
        reply = request(authed.address, "GET", "/api/v1/status", headers=headers)
        assert reply.status == 401, headers
        assert reply.headers["www-authenticate"].startswith('Bearer realm="gitorch"')
        assert "error" in reply.json()
    reply = request(authed.address, "GET", "/api/v1/status", headers=bearer("wrong-token-01234"))
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    assert reply.json() == {"error": "invalid API token"}


def test_read_token_reads_but_cannot_act(authed: ApiServer, handle: StubHandle) -> None:
    for path in ("/api/v1/status", "/api/v1/history", "/api/v1/plan", "/metrics"):
        assert request(authed.address, "GET", path, headers=bearer(READ)).status == 200, path
    for path in (
        "/api/v1/services/web/abort",
        "/api/v1/services/web/promote",
        "/api/v1/reconcile",
        "/api/v1/nodes/node-a/drain",
        "/api/v1/volumes/pgdata/reset",
    ):
        reply = request(authed.address, "POST", path, b"{}", headers=bearer(READ))
        assert reply.status == 403, path
        assert 'error="insufficient_scope"' in reply.headers["www-authenticate"]
        assert reply.json()["error"] == (
            f"token 'grafana' has the read role; POST {path} needs the write role"
        )
    assert handle.actions == [] and handle.triggers == []
    assert handle.drains == [] and handle.resets == []


def test_write_token_acts_and_its_name_reaches_the_handle(
    authed: ApiServer, handle: StubHandle
) -> None:
    reply = request(
        authed.address, "POST", "/api/v1/services/web/abort", b"{}", headers=bearer(WRITE)
    )
    assert reply.status == 202, reply.body
    reply = request(authed.address, "POST", "/api/v1/reconcile", b"{}", headers=bearer(BARE))
    assert reply.status == 202, reply.body
    assert handle.actions == [("web", "abort")]
    # request_action and the reconcile carry the token's name; the trigger that follows an
    # action is not audited twice (None).
    assert handle.actors == ["ci-bot", None, "line-5"]


def test_healthz_and_webhook_need_no_token(authed: ApiServer) -> None:
    assert request(authed.address, "GET", "/healthz").status == 200
    # The webhook keeps its HMAC: no bearer challenge, the signature decides (401 unsigned).
    reply = request(
        authed.address, "POST", "/api/v1/webhook", b"{}", headers={"X-GitHub-Event": "push"}
    )
    assert reply.status == 401 and "www-authenticate" not in reply.headers
    assert "signature" in reply.json()["error"]


def test_no_token_in_any_log_line(authed: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "guessed-token-9876543210"
    for token in (READ, WRITE, wrong):
        request(authed.address, "GET", "/api/v1/status", headers=bearer(token))
        request(authed.address, "POST", "/api/v1/services/web/abort", b"{}", headers=bearer(token))
    refused = [r for r in caplog.records if r.getMessage().startswith("API request refused")]
    assert len(refused) == 3  # wrong on both routes, read on abort
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for token in (READ, WRITE, wrong):
        assert token not in text


# -- where an open API may listen ------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "gitorch.example.com"])
def test_exposed_hosts(host: str) -> None:
    assert not is_loopback(host)


def test_open_api_beyond_loopback_is_refused(handle: StubHandle, tokens: TokenSet) -> None:
    with pytest.raises(ExposedApiError) as caught:
        ApiServer(handle, "0.0.0.0:0")
    assert "refusing to serve the API on 0.0.0.0 without authentication" in caught.value.message
    assert any("--api-insecure" in line for line in caught.value.detail)
    with pytest.raises(ExposedApiError):
        ApiServer(handle, ":0")  # every interface
    # Tokens without TLS would cross the network in clear: refused too (tests/api/test_tls.py
    # starts one with both).
    with pytest.raises(ExposedApiError) as caught:
        ApiServer(handle, "0.0.0.0:0", tokens=tokens)
    assert "without TLS" in caught.value.message
    # The explicit opt-out lets it start.
    with ApiServer(handle, "0.0.0.0:0", tokens=tokens, insecure=True) as api:
        assert request(("127.0.0.1", api.address[1]), "GET", "/api/v1/status").status == 401
    with ApiServer(handle, "0.0.0.0:0", insecure=True) as api:
        assert request(("127.0.0.1", api.address[1]), "GET", "/api/v1/status").status == 200
