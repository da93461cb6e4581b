"""Webhooks over real sockets: signatures decide everything, and a refused delivery
changes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path
from urllib.parse import urlencode

import pytest
from api_helpers import SECRET, StubHandle, parse_prometheus, request

from gitorch.api.server import MAX_BODY, ApiServer
from gitorch.api.webhook import WebhookSecret, handle_delivery
from gitorch.errors import ConfigError

AFTER = "9c1e5b7d4a6f8e0c2b4d6f8a0c1e3b5d7f9a3f2a"

PUSH = {
    "ref": "refs/heads/main",
    "before": "0" * 40,
    "after": AFTER,
    "repository": {
        "full_name": "shop/deploy",
        "clone_url": "https://git.example.com/shop/deploy.git",
        "ssh_url": "git@git.example.com:shop/deploy.git",
        "html_url": "https://git.example.com/shop/deploy",
    },
}


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def deliver(
    server: ApiServer, body: bytes, headers: dict[str, str], content_type: str = "application/json"
) -> tuple[int, dict[str, object]]:
    reply = request(
        server.address,
        "POST",
        "/api/v1/webhook",
        body,
        {"Content-Type": content_type, **headers},
    )
    return reply.status, reply.json()


def webhook_count(handle: StubHandle, result: str) -> float:
    return handle.metrics.value("gitorch_webhook_requests_total", result=result)


def test_github_push_with_a_valid_signature_triggers_once(
    server: ApiServer, handle: StubHandle
) -> None:
    body = json.dumps(PUSH).encode()
    status, answer = deliver(
        server,
        body,
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(body)}"},
    )
    assert status == 202
    assert answer == {"accepted": True, "ref": "refs/heads/main", "after": AFTER}
    assert handle.triggers == [f"webhook push refs/heads/main {AFTER[:12]}"]
    assert webhook_count(handle, "accepted") == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},  # no signature at all
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-Hub-Signature-256": "sha256="},
        {"X-Hub-Signature-256": "garbage"},
        {"X-Gitea-Signature": "0" * 64},
        {"X-Forgejo-Signature": "zz"},
        {"X-Hub-Signature-256": "sha256=é" + "0" * 63},
    ],
    ids=["missing", "wrong", "empty", "no-prefix", "gitea-wrong", "forgejo-garbage", "non-ascii"],
)
def test_missing_or_bad_signature_is_401_and_nothing_happens(
    server: ApiServer, handle: StubHandle, headers: dict[str, str]
) -> None:
    body = json.dumps(PUSH).encode()
    status, answer = deliver(server, body, {"X-GitHub-Event": "push", **headers})
    assert status == 401
    assert answer == {"error": "missing or invalid webhook signature"}
    assert handle.triggers == []
    assert webhook_count(handle, "unauthorized") == 1
    assert webhook_count(handle, "accepted") == 0


def test_a_signature_of_another_body_or_secret_is_refused(
    server: ApiServer, handle: StubHandle
) -> None:
    body = json.dumps(PUSH).encode()
    tampered = body.replace(b"refs/heads/main", b"refs/heads/evil")
    status, _ = deliver(server, tampered, {"X-Hub-Signature-256": f"sha256={sign(body)}"})
    assert status == 401
    status, _ = deliver(
        server, body, {"X-Hub-Signature-256": f"sha256={sign(body, b'other secret')}"}
    )
    assert status == 401
    # the sha1 header GitHub also sends is not enough on its own
    legacy = "sha1=" + hmac.new(SECRET, body, hashlib.sha1).hexdigest()
    status, _ = deliver(server, body, {"X-Hub-Signature": legacy})
    assert status == 401
    assert handle.triggers == []


@pytest.mark.parametrize(
    ("signature_header", "event_header"),
    [("X-Gitea-Signature", "X-Gitea-Event"), ("X-Forgejo-Signature", "X-Forgejo-Event")],
)
def test_gitea_and_forgejo_signatures(
    server: ApiServer, handle: StubHandle, signature_header: str, event_header: str
) -> None:
    body = json.dumps(PUSH).encode()
    status, _ = deliver(server, body, {event_header: "push", signature_header: sign(body)})
    assert status == 202
    assert handle.triggers == [f"webhook push refs/heads/main {AFTER[:12]}"]


def test_every_signature_present_must_match(server: ApiServer, handle: StubHandle) -> None:
    body = json.dumps(PUSH).encode()
    good = sign(body)
    status, _ = deliver(
        server,
        body,
        {"X-Gitea-Signature": good, "X-Hub-Signature-256": "sha256=" + "1" * 64},
    )
    assert status == 401
    status, _ = deliver(
        server, body, {"X-Gitea-Signature": good, "X-Hub-Signature-256": f"sha256={good}"}
    )
    assert status == 202
    assert len(handle.triggers) == 1


def test_ping_answers_pong_without_a_reconcile(server: ApiServer, handle: StubHandle) -> None:
    body = json.dumps({"zen": "Design for failure.", "hook_id": 42}).encode()
    status, answer = deliver(
        server, body, {"X-GitHub-Event": "ping", "X-Hub-Signature-256": f"sha256={sign(body)}"}
    )
    assert (status, answer) == (200, {"pong": True})
    assert handle.triggers == []
    assert webhook_count(handle, "ping") == 1


@pytest.mark.parametrize(
    ("header", "signature_header"),
    [
        ("X-GitHub-Delivery", "X-Hub-Signature-256"),
        ("X-Gitea-Delivery", "X-Gitea-Signature"),
        ("X-Forgejo-Delivery", "X-Forgejo-Signature"),
    ],
)
def test_the_delivery_id_names_the_trigger(
    server: ApiServer, handle: StubHandle, header: str, signature_header: str
) -> None:
    # The revision's history keeps it (issue 22): the forge's delivery log finds it again.
    body = json.dumps(PUSH).encode()
    prefix = "sha256=" if signature_header == "X-Hub-Signature-256" else ""
    delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    headers = {"X-GitHub-Event": "push", signature_header: prefix + sign(body), header: delivery}
    assert deliver(server, body, headers)[0] == 202
    assert handle.triggers == [f"webhook push refs/heads/main {AFTER[:12]} (delivery {delivery})"]


@pytest.mark.parametrize("delivery", ["", "x" * 101, "bad\nline"])
def test_an_unusable_delivery_id_is_left_out(
    server: ApiServer, handle: StubHandle, delivery: str
) -> None:
    body = json.dumps(PUSH).encode()
    headers = {
        "X-GitHub-Event": "push",
        "X-Hub-Signature-256": f"sha256={sign(body)}",
        "X-GitHub-Delivery": delivery,
    }
    outcome = handle_delivery(
        WebhookSecret(SECRET), {k.lower(): v for k, v in headers.items()}, body
    )
    assert outcome.push is not None and outcome.push.delivery == ""
    assert outcome.push.trigger_reason == f"webhook push refs/heads/main {AFTER[:12]}"


def test_a_ping_is_logged_at_info(
    server: ApiServer, handle: StubHandle, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps({"zen": "Design for failure.", "hook_id": 42}).encode()
    headers = {
        "X-GitHub-Event": "ping",
        "X-GitHub-Delivery": "ping-1",
        "X-Hub-Signature-256": f"sha256={sign(body)}",
    }
    with caplog.at_level(logging.INFO, logger="gitorch.api"):
        assert deliver(server, body, headers)[0] == 200
    (record,) = [r for r in caplog.records if r.getMessage() == "webhook ping answered"]
    assert record.levelno == logging.INFO
    assert (record.webhook, record.event, record.delivery) == ("ping", "ping", "ping-1")  # type: ignore[attr-defined]


def test_other_events_are_ignored(server: ApiServer, handle: StubHandle) -> None:
    body = json.dumps({"action": "opened"}).encode()
    status, answer = deliver(
        server, body, {"X-GitHub-Event": "issues", "X-Hub-Signature-256": f"sha256={sign(body)}"}
    )
    assert (status, answer) == (200, {"ignored": "issues"})
    assert handle.triggers == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({**PUSH, "after": "not-a-sha"}).encode(),
        json.dumps({**PUSH, "ref": "refs/heads/a\nb"}).encode(),
        json.dumps({"after": AFTER}).encode(),
        b"\xff\xfe",
    ],
    ids=["broken-json", "not-object", "bad-after", "control-char-ref", "no-ref", "not-utf8"],
)
def test_signed_but_invalid_payload_is_400(
    server: ApiServer, handle: StubHandle, body: bytes
) -> None:
    status, answer = deliver(
        server, body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(body)}"}
    )
    assert status == 400
    assert "error" in answer
    assert handle.triggers == []
    assert webhook_count(handle, "invalid") == 1


def test_github_form_encoded_payload(server: ApiServer, handle: StubHandle) -> None:
    body = urlencode({"payload": json.dumps(PUSH)}).encode()
    status, _ = deliver(
        server,
        body,
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(body)}"},
        content_type="application/x-www-form-urlencoded",
    )
    assert status == 202
    assert len(handle.triggers) == 1


def test_no_secret_means_webhooks_are_disabled(handle: StubHandle) -> None:
    body = json.dumps(PUSH).encode()
    with ApiServer(handle, "127.0.0.1:0") as api:
        status, answer = deliver(
            api, body, {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(body)}"}
        )
    assert status == 403
    assert "--webhook-secret-file" in str(answer["error"])
    assert handle.triggers == []
    assert webhook_count(handle, "disabled") == 1


def test_oversized_delivery_is_413_and_not_verified(server: ApiServer, handle: StubHandle) -> None:
    body = b" " * (MAX_BODY + 1)
    reply = request(
        server.address,
        "POST",
        "/api/v1/webhook",
        body,
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sign(body)}"},
    )
    assert reply.status == 413
    assert handle.triggers == []


def test_webhook_results_reach_the_metrics_route(server: ApiServer, handle: StubHandle) -> None:
    body = json.dumps(PUSH).encode()
    deliver(server, body, {"X-Hub-Signature-256": f"sha256={sign(body)}"})
    deliver(server, body, {})
    families = parse_prometheus(request(server.address, "GET", "/metrics").body.decode())
    samples = {
        labels["result"]: value
        for _, labels, value in families["gitorch_webhook_requests_total"].samples
    }
    assert samples["accepted"] == 1 and samples["unauthorized"] == 1 and samples["ping"] == 0


def test_the_secret_never_reaches_the_log(
    server: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(PUSH).encode()
    with caplog.at_level(logging.DEBUG):
        deliver(server, body, {"X-Hub-Signature-256": f"sha256={sign(body)}"})
        deliver(server, body, {"X-Hub-Signature-256": "sha256=" + "0" * 64})
    text = caplog.text + repr([vars(r) for r in caplog.records])
    assert SECRET.decode() not in text
    assert "webhook push accepted" in caplog.text and "webhook refused" in caplog.text


# -- the secret file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"s3cret", b"s3cret"),
        (b"s3cret\n", b"s3cret"),
        (b"s3cret\r\n", b"s3cret"),
        (b"s3cret\n\n", b"s3cret\n"),  # only one newline is the editor's
        (b" s3cret ", b" s3cret "),
    ],
)
def test_secret_file_drops_one_trailing_newline(
    tmp_path: Path, content: bytes, expected: bytes
) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    secret = WebhookSecret.from_file(path)
    assert secret.sign(b"x") == sign(b"x", expected)


def test_secret_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the webhook secret file"):
        WebhookSecret.from_file(tmp_path / "missing")
    (tmp_path / "empty").write_bytes(b"\n")
    with pytest.raises(ConfigError, match="is empty"):
        WebhookSecret.from_file(tmp_path / "empty")


def test_secret_repr_hides_the_value() -> None:
    secret = WebhookSecret(b"hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in repr(handle_delivery(secret, {}, b"{}"))
