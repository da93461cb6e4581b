"""Push webhooks from GitHub, Gitea and Forgejo, verified with HMAC-SHA256.

A forge signs the raw request body with a shared secret:

* GitHub: ``X-Hub-Signature-256: sha256=<hex>``
* Gitea: ``X-Gitea-Signature: <hex>``; Forgejo: ``X-Forgejo-Signature: <hex>``
  (both also send ``X-Hub-Signature-256`` in recent versions)

Rules, in order:

1. no secret configured (no ``--webhook-secret-file``): the webhook is disabled and every
   delivery gets **403** with a message saying so (not 404: the route exists, and an
   operator reading the forge's delivery log should see *why* it was refused);
2. no signature header, or any present signature header that does not match: **401**,
   and nothing else happens (the body is not even parsed);
3. ``ping`` events: 200 ``{"pong": true}``;
4. ``push`` events: 202, and the daemon is asked for a reconcile;
5. other events: 200 ``{"ignored": "<event>"}``; a signed body that is not a valid
   payload: 400.

The payload only *wakes* the daemon: what gets deployed is always what the daemon itself
fetches from its configured repository, so a replayed or foreign (but signed) delivery
can cause at most one extra reconcile. Comparisons are constant-time
(:func:`hmac.compare_digest`); the secret is never logged nor shown in a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from gitorch.errors import ConfigError

#: Signature headers (lower-case) and the prefix their value carries.
SIGNATURE_HEADERS = {
    "x-hub-signature-256": "sha256=",
    "x-gitea-signature": "",
    "x-forgejo-signature": "",
}

#: Headers naming the event, by forge.
EVENT_HEADERS = ("x-github-event", "x-gitea-event", "x-forgejo-event", "x-gogs-event")

#: Headers carrying the forge's id of one delivery (shown in its delivery log).
DELIVERY_HEADERS = (
    "x-github-delivery",
    "x-gitea-delivery",
    "x-forgejo-delivery",
    "x-gogs-delivery",
)
_MAX_DELIVERY = 100

_HEX_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # sha1 or sha256 object names
_MAX_REF = 255


class WebhookSecret:
    """The shared secret; its value never appears in a repr, str or log line."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not value:
            raise ConfigError("the webhook secret is empty")
        self._value = value

    @classmethod
    def from_file(cls, path: str | Path) -> WebhookSecret:
        """Read the secret from ``path``; one trailing newline (as editors add) is dropped."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the webhook secret file {path}: {exc.strerror or exc}"
            ) from exc
        if raw.endswith(b"\r\n"):
            raw = raw[:-2]
        elif raw.endswith(b"\n"):
            raw = raw[:-1]
        if not raw:
            raise ConfigError(f"the webhook secret file {path} is empty")
        return cls(raw)

    def sign(self, body: bytes) -> str:
        """Hex HMAC-SHA256 of ``body`` (what the forge sends, without prefix)."""
        return hmac.new(self._value, body, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "WebhookSecret(<hidden>)"

    __str__ = __repr__


def verify_signature(secret: WebhookSecret, headers: Mapping[str, str], body: bytes) -> bool:
    """True if at least one signature header is present and every present one matches.

    ``headers`` must have lower-case names.
    """
    expected = secret.sign(body)
    seen = False
    for name, prefix in SIGNATURE_HEADERS.items():
        value = headers.get(name)
        if value is None:
            continue
        seen = True
        value = value.strip()
        if not value.startswith(prefix):
            return False
        # compare_digest on ASCII str is constant-time; a non-ASCII value is simply wrong.
        given = value[len(prefix) :].lower()
        if not given.isascii() or not hmac.compare_digest(given, expected):
            return False
    return seen


@dataclass(frozen=True)
class PushEvent:
    """The parts of a push payload gitorch looks at."""

    ref: str
    after: str
    repository_urls: tuple[str, ...] = ()
    delivery: str = ""  # the forge's delivery id, when it sent one

    @property
    def trigger_reason(self) -> str:
        delivery = f" (delivery {self.delivery})" if self.delivery else ""
        return f"webhook push {self.ref} {self.after[:12]}{delivery}"


@dataclass(frozen=True)
class WebhookOutcome:
    """What the HTTP layer answers, which metrics result to count, and whether to trigger."""

    status: int
    body: dict[str, Any]
    result: str  # label of gitorch_webhook_requests_total
    push: PushEvent | None = None
    log_fields: dict[str, Any] = field(default_factory=dict)


class InvalidPayload(ValueError):
    """A signed body that is not a push payload gitorch can read."""


def event_name(headers: Mapping[str, str]) -> str | None:
    for name in EVENT_HEADERS:
        value = headers.get(name)
        if value:
            return value.strip().lower()
    return None


def delivery_id(headers: Mapping[str, str]) -> str:
    """The forge's id of this delivery ("" when none, or not a short printable string)."""
    for name in DELIVERY_HEADERS:
        value = headers.get(name, "").strip()
        if value and len(value) <= _MAX_DELIVERY and value.isprintable():
            return value
    return ""


def decode_payload(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The JSON payload: raw JSON, or GitHub's form encoding (``payload=<json>``)."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
        if content_type == "application/x-www-form-urlencoded":
            values = parse_qs(text, strict_parsing=True).get("payload")
            if not values:
                raise InvalidPayload("form-encoded delivery without a payload field")
            text = values[0]
        data = json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, InvalidPayload):
            raise
        raise InvalidPayload(f"the body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidPayload("the payload is not a JSON object")
    return data


def parse_push(data: Mapping[str, Any]) -> PushEvent:
    """Read ref, the new sha and the repository's clone URLs from a push payload."""
    ref = data.get("ref")
    after = data.get("after")
    if not isinstance(ref, str) or not ref or len(ref) > _MAX_REF or not ref.isprintable():
        raise InvalidPayload("push payload without a valid 'ref'")
    if not isinstance(after, str) or not _HEX_SHA.match(after):
        raise InvalidPayload("push payload without a valid 'after' commit")
    repo = data.get("repository")
    urls: list[str] = []
    if isinstance(repo, dict):
        for key in ("clone_url", "ssh_url", "git_url", "html_url"):
            value = repo.get(key)
            if isinstance(value, str) and value and value not in urls:
                urls.append(value)
    return PushEvent(ref=ref, after=after, repository_urls=tuple(urls))


def handle_delivery(
    secret: WebhookSecret | None, headers: Mapping[str, str], body: bytes
) -> WebhookOutcome:
    """Decide what one delivery gets (pure: the caller triggers and counts).

    ``headers`` must have lower-case names.
    """
    if secret is None:
        return WebhookOutcome(
            403,
            {"error": "webhooks are disabled: start the daemon with --webhook-secret-file"},
            "disabled",
        )
    if not verify_signature(secret, headers, body):
        return WebhookOutcome(
            401, {"error": "missing or invalid webhook signature"}, "unauthorized"
        )
    event = event_name(headers)
    delivery = delivery_id(headers)
    traced = {"delivery": delivery} if delivery else {}
    try:
        data = decode_payload(headers, body)
        if event == "ping" or (event is None and "zen" in data and "hook_id" in data):
            return WebhookOutcome(
                200, {"pong": True}, "ping", log_fields={"event": "ping", **traced}
            )
        if event not in ("push", None):
            return WebhookOutcome(
                200, {"ignored": event}, "ignored", log_fields={"event": event, **traced}
            )
        push = replace(parse_push(data), delivery=delivery)
    except InvalidPayload as exc:
        return WebhookOutcome(400, {"error": str(exc)}, "invalid", log_fields=traced)
    return WebhookOutcome(
        202,
        {"accepted": True, "ref": push.ref, "after": push.after},
        "accepted",
        push=push,
        log_fields={"event": "push", "ref": push.ref, "after": push.after, **traced},
    )
