"""Fixtures of the API tests: a stub handle and a real server on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_helpers import SECRET, StubHandle

from gitorch.api.server import ApiServer
from gitorch.api.webhook import WebhookSecret


@pytest.fixture
def handle() -> StubHandle:
    return StubHandle()


@pytest.fixture
def secret() -> WebhookSecret:
    return WebhookSecret(SECRET)


@pytest.fixture
def server(handle: StubHandle, secret: WebhookSecret) -> Iterator[ApiServer]:
    api = ApiServer(handle, "127.0.0.1:0", webhook_secret=secret)
    api.start()
    try:
        yield api
    finally:
        api.stop()
