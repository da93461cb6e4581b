"""The dashboard's HTTP contract without a browser: who may see what, the CSRF check,
redirects that stay on the host, static files, and the API routes left untouched.

The daemon's side is a small stub handle (the browser tests run the real daemon)."""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import pytest

from gitorch.api.auth import TokenSet
from gitorch.api.metrics import Metrics
from gitorch.api.server import ApiServer
from gitorch.dashboard import Dashboard
from gitorch.dashboard.views import commit_link_base

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"


@dataclass
class Handle:
    metrics: Metrics = field(default_factory=Metrics)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        return {
            "cluster": "c",
            "revision": "a" * 40,
            "services": [
                {
                    "name": "web",
                    "revision": "a" * 40,
                    "replicas": {"desired": 2, "ready": 1, "updated": 1},
                    "rollout": {"phase": "Paused", "step": 1, "weight": 20, "message": "<b>x</b>"},
                    "instances": [],
                    "strategy": {"type": "Canary", "canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
                },
                {
                    "name": "api",
                    "revision": "a" * 40,
                    "replicas": {"desired": 3, "running": 2, "ready": 2, "updated": 2},
                    "rollout": {"phase": "Healthy", "message": ""},
                    "instances": [],
                    "autoscale": {
                        "min": 1, "max": 4, "desired": 3, "decidedAt": 1.7e9,
                        "reason": "cpu 120% of 50% -> 3 <now>",
                        "metrics": [
                            {"metric": "cpu", "value": 120.0, "target": 50.0, "proposal": 3},
                            {"metric": "rps", "value": None, "target": 10.0, "proposal": None,
                             "message": "no traffic yet"},
                        ],
                        "vertical": {"mode": "Auto", "lines": [
                            "applied by mode Auto: requests.memory 512Mi -> 237Mi",
                            "requests.cpu 250m -> 120m",
                        ]},
                    },
                },
            ],
            "nodePools": [
                {
                    "name": "workers", "inGit": True, "minNodes": 0, "maxNodes": 5,
                    "nodes": [
                        {"name": "workers-a1b2c3", "state": "draining", "ready": True,
                         "utilization": 0.25},
                    ],
                    "pendingSince": None,
                    "lastDecision": {"at": 1.7e9, "action": "drain workers-a1b2c3", "from": 1,
                                     "to": 1, "reason": "requested 25% < 50% <for> 600s"},
                    "error": "NodePool workers: provider list exited 3: <quota>",
                }
            ],
            "nodes": [
                {
                    "name": "n1", "driver": "process", "ready": True, "message": "",
                    "capacity": {"cpu": 2000, "memory": 4 * 2**30},
                    "requested": {"cpu": 500, "memory": 2**30}, "replicas": 2,
                }
            ],
        }  # fmt: skip

    def history(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        return []

    def scaling(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        return []

    def plan(self, ref: str | None) -> dict[str, Any]:
        return {"changes": [], "summary": {}}

    def audit(self, service: str | None, limit: int) -> list[dict[str, Any]]:
        return []

    def trigger(self, reason: str, actor: str | None = None) -> None:
        self.calls.append(("trigger", reason, str(actor)))

    def request_action(
        self, service: str, action: str, actor: str | None = None
    ) -> tuple[bool, str]:
        self.calls.append((action, service, str(actor)))
        return True, f"{action} of {service} requested"

    def dead_replicas(self, service: str, lines: int) -> list[dict[str, Any]]:
        return [
            {"replica": "web-1", "node": "n1", "exitReason": "OOMKilled", "output": "boom <x>\n"}
        ]

    def drain(self, node: str, draining: bool, actor: str | None) -> tuple[bool, str]:
        self.calls.append(("drain" if draining else "undrain", node, str(actor)))
        return True, f"node {node}"

    def healthy(self) -> tuple[bool, str]:
        return True, ""


@dataclass
class Site:
    handle: Handle
    port: int

    def ask(
        self, method: str, path: str, *, token: str | None = None, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], str]:  # fmt: skip
        headers = {"Cookie": f"gitorch_token={token}"} if token else {}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text
        finally:
            conn.close()

    def csrf(self, token: str) -> str:
        _, _, page = self.ask("GET", "/", token=token)
        found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
        assert found, page
        return found.group(1)


@pytest.fixture
def site() -> Iterator[Site]:
    handle = Handle()
    tokens = TokenSet.from_lines([f"viewer:read:{READ}", f"deployer:write:{WRITE}"])
    server = ApiServer(handle, "127.0.0.1:0", tokens=tokens, app=Dashboard(handle, tokens))
    server.start()
    try:
        yield Site(handle, server.address[1])
    finally:
        server.stop()


def test_pages_need_a_token_and_escape_what_they_show(site: Site) -> None:
    status, headers, _ = site.ask("GET", "/services/web")
    assert status == 303 and headers["location"] == "/login?next=/services/web"
    status, headers, page = site.ask("GET", "/services/web", token=READ)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert site.ask("GET", "/services/web", token="not-a-token-0000000000")[0] == 303


def test_read_tokens_get_no_buttons_and_their_forms_are_refused(site: Site) -> None:
    _, _, page = site.ask("GET", "/services/web", token=READ)
    assert "data-action" not in page
    form = {"action": "promote", "service": "web", "confirmed": "1", "csrf": site.csrf(READ)}
    assert site.ask("POST", "/actions", token=READ, form=form)[0] == 403
    assert site.handle.calls == []


def test_an_action_needs_this_viewers_csrf_token(site: Site) -> None:
    form = {"action": "promote", "service": "web", "confirmed": "1", "back": "/services/web"}
    assert site.ask("POST", "/actions", token=WRITE, form=form)[0] == 403
    # Another viewer's CSRF token does not do either.
    assert (
        site.ask("POST", "/actions", token=WRITE, form={**form, "csrf": site.csrf(READ)})[0] == 403
    )
    assert site.handle.calls == []
    status, headers, _ = site.ask("POST", "/actions", token=WRITE, form={**form, "csrf": site.csrf(WRITE)})  # fmt: skip
    assert status == 303 and headers["location"].startswith("/services/web?flash=")
    assert site.handle.calls[0] == ("promote", "web", "deployer")


def test_without_confirmation_an_action_asks_first(site: Site) -> None:
    form = {"action": "drain", "node": "n1", "csrf": site.csrf(WRITE)}
    status, _, page = site.ask("POST", "/actions", token=WRITE, form=form)
    assert status == 200 and "Confirm" in page and 'name="confirmed" value="1"' in page
    assert site.handle.calls == []
    site.ask("POST", "/actions", token=WRITE, form={**form, "confirmed": "1"})
    assert site.handle.calls[0] == ("drain", "n1", "deployer")


def test_sign_in_sets_a_strict_http_only_cookie_and_redirects_only_on_this_host(
    site: Site,
) -> None:
    status, headers, _ = site.ask(
        "POST", "/login", form={"token": READ, "next": "//evil.example/x"}
    )
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, page = site.ask("POST", "/login", form={"token": "wrong-token-000000000000"})
    assert status == 401 and "not one of the daemon" in page


def test_static_files_and_the_api_beside_the_pages(site: Site) -> None:
    status, headers, body = site.ask("GET", "/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert "EventSource" in body
    assert site.ask("GET", "/static/../app.py")[0] == 404
    assert site.ask("GET", "/api/v1/status")[0] == 401  # the API keeps its bearer tokens
    assert site.ask("GET", "/nothing-here", token=READ)[0] == 404


def test_nodes_show_what_is_requested_of_their_capacity(site: Site) -> None:
    _, headers, page = site.ask("GET", "/", token=READ)
    assert "500m / 2000m" in page and "1024 / 4096 MiB" in page and 'aria-label="25%"' in page
    # The bar is filled to 25% by markup the page's CSP lets through: an inline style
    # attribute is dropped under default-src 'self', and the bar was drawn full.
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert re.search(r'aria-label="25%"[^>]*><rect class="fill" width="25.0"', page), page
    assert " style=" not in page


def test_a_service_page_shows_its_dead_replicas_output(site: Site) -> None:
    _, _, page = site.ask("GET", "/services/web", token=READ)
    assert "OOMKilled" in page and "boom &lt;x&gt;" in page


@pytest.mark.parametrize(
    ("repo", "base"),
    [
        ("https://github.com/acme/shop.git", "https://github.com/acme/shop"),
        ("https://user:secret@gitlab.com/acme/infra/shop", "https://gitlab.com/acme/infra/shop"),
        ("git@codeberg.org:acme/shop.git", "https://codeberg.org/acme/shop"),
        ("https://git.internal.example/acme/shop", None),
        ("/srv/git/shop", None),
        (".", None),
    ],
)
def test_revisions_link_to_known_forges_only(repo: str, base: str | None) -> None:
    assert commit_link_base(repo) == base


def test_a_service_page_shows_its_autoscaler_and_its_recommendations(site: Site) -> None:
    _, _, page = site.ask("GET", "/services/api", token=READ)
    assert "current <b>2</b> running · desired <b>3</b> · bounds 1–4" in page
    assert "<td>cpu</td><td>120</td><td>50</td><td>3</td>" in page
    assert "<td>rps</td><td>no traffic yet</td>" in page
    assert "cpu 120% of 50% -&gt; 3 &lt;now&gt;" in page  # the last decision, escaped
    assert "Vertical (Auto)" in page
    assert "applied by mode Auto: requests.memory 512Mi -&gt; 237Mi" in page
    _, _, plain = site.ask("GET", "/services/web", token=READ)
    assert "Autoscaling" not in plain  # a service without autoscale shows none


def test_the_cluster_page_shows_node_pools(site: Site) -> None:
    _, _, page = site.ask("GET", "/", token=READ)
    row = re.search(r'<tr data-pool="workers">.*?</tr>', page)
    assert row, page
    assert "1 (0–5)" in row.group(0) and "workers-a1b2c3" in row.group(0)
    assert "draining" in row.group(0) and "25% requested" in row.group(0)
    assert "requested 25% &lt; 50% &lt;for&gt; 600s" in row.group(0)
    assert "provider list exited 3: &lt;quota&gt;" in row.group(0)
