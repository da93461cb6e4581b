"""The dashboard in a real browser (headless chromium) against a real daemon: process
driver, API tokens, a ``web`` canary paused at its manual step.

One daemon serves the module; the tests that only look or are refused come first, the
promote that moves the canary on after them. Each test saves a screenshot.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from browser_helpers import bar_fills, screenshot, sign_in
from data_plane_helpers import stop_data_plane
from reconciler_helpers import (
    DaemonProc,
    cluster_of,
    commit,
    free_port,
    init_repo,
    process_runtime,
    process_service,
    remove_cluster,
    wait_for,
)
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

READ = "0123456789abcdef-read-token-dash"
WRITE = "fedcba9876543210-write-token-dash"
SECRET_VALUE = "hunter2-never-shown"

CANARY = """\
  strategy:
    type: Canary
    progressDeadlineSeconds: 300
    autoRollback: true
    canary:
      steps:
        - setWeight: 30
        - pause: {}
        - setWeight: 70
        - pause: {}
"""


def canary(port: int, version: str) -> str:
    return process_service("web", port=port, version=version, replicas=1, strategy=CANARY)


@dataclass
class World:
    root: Path
    repo: Path
    daemon: DaemonProc
    canary: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def service(self, name: str) -> dict[str, Any] | None:
        code, data = self.daemon.request(
            "GET", "/api/v1/status", headers={"Authorization": f"Bearer {READ}"}
        )
        assert code == 200, (code, data)
        return next((s for s in data["services"] if s["name"] == name), None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dashboard")
    repo, state = root / "repo", root / "state"
    init_repo(repo)
    tokens = root / "api-tokens"
    tokens.write_text(f"viewer:read:{READ}\ndeployer:write:{WRITE}\n", encoding="utf-8")
    tokens.chmod(0o600)
    port = free_port()
    good = commit(repo, {"web.yaml": canary(port, "1")}, "web: v1")
    daemon = DaemonProc(
        str(repo), state, "process", resync=0.3, extra=["--api-token-file", str(tokens)]
    )
    try:
        world = World(root, repo, daemon, "")

        def on(sha: str, phase: str) -> bool:
            svc = world.service("web")
            return bool(svc and svc["revision"] == sha and svc["rollout"]["phase"] == phase)

        wait_for("v1 healthy", lambda: on(good, "Healthy"), 60, describe=daemon.log_tail)
        world.canary = commit(repo, {"web.yaml": canary(port, "2")}, "web: v2")
        wait_for(
            "the canary paused", lambda: on(world.canary, "Paused"), 60, describe=daemon.log_tail
        )
        yield world
    finally:
        daemon.stop()
        stop_data_plane(state)
        remove_cluster(process_runtime(state), cluster_of(state))


def wait_page(browser: webdriver.Chrome, what: str, check: Any, timeout: float = 60) -> None:
    """Wait until ``check(browser)``. The page updates itself live: an element replaced
    between a check's find and its read is checked again on the next round, not an error
    (CI once failed the promote test on ``StaleElementReferenceException``)."""
    WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda b: check(b), message=what
    )


def test_the_cluster_page_lists_services_and_a_commit_appears_without_reloading(
    browser: webdriver.Chrome, world: World
) -> None:
    browser.get(world.url + "/")
    # Not signed in: the login form, not the cluster.
    assert browser.current_url.startswith(f"{world.url}/login")
    sign_in(browser, world.url, READ)
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-service="web"]')
    assert row.find_element(By.CSS_SELECTOR, ".phase").text == "Paused"
    wait_page(browser, "the live stream connected", lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "connected", 15)  # fmt: skip
    browser.execute_script("window.stillTheSamePage = 42")

    extra = process_service("extra", port=free_port(), replicas=1)
    commit(world.repo, {"extra.yaml": extra}, "add extra")
    wait_page(
        browser,
        "the new service on the page",
        lambda b: b.find_elements(By.CSS_SELECTOR, 'tr[data-service="extra"] .phase'),
    )
    assert browser.execute_script("return window.stillTheSamePage") == 42  # no reload
    wait_page(
        browser,
        "extra Healthy, live",
        lambda b: (
            b.find_element(By.CSS_SELECTOR, 'tr[data-service="extra"] .phase').text == "Healthy"
        ),
    )
    assert browser.execute_script("return window.stillTheSamePage") == 42
    # Every bar is drawn as full as it says, no fuller: the node's requests are a small
    # share of its capacity (this machine's), and a bar drawn full would say otherwise.
    nodes = bar_fills(browser, "table.nodes")
    assert nodes and min(label for label, _ in nodes) <= 10, nodes
    for label, drawn in [*nodes, *bar_fills(browser, "table.services")]:
        assert abs(drawn - label / 100) <= 0.02, (label, drawn)
    screenshot(browser, "cluster")


def test_a_read_only_viewer_sees_no_buttons(browser: webdriver.Chrome, world: World) -> None:
    sign_in(browser, world.url, READ)
    browser.get(f"{world.url}/services/web")
    assert "Paused at step" in browser.page_source
    assert "deployer" in browser.find_element(By.CLASS_NAME, "paused-note").text  # who can
    assert browser.find_elements(By.CSS_SELECTOR, "button[data-action]") == []
    screenshot(browser, "service-read-only")


def _post(world: World, path: str, fields: dict[str, str], token: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", world.daemon.port, timeout=15)
    try:
        conn.request(
            "POST",
            path,
            body=urlencode(fields),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"gitorch_token={token}",
            },
        )
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_forged_post_without_the_csrf_token_is_refused(world: World) -> None:
    form = {"action": "promote", "service": "web", "confirmed": "1", "back": "/"}
    assert _post(world, "/actions", form, WRITE) == 403
    assert _post(world, "/actions", {**form, "csrf": "0" * 64}, WRITE) == 403
    time.sleep(1.5)  # a promote would have moved the canary on by now
    svc = world.service("web")
    assert svc is not None and svc["rollout"]["phase"] == "Paused"
    assert svc["rollout"]["weight"] == 30


def test_promote_with_a_write_token_moves_the_canary_on_live(
    browser: webdriver.Chrome, world: World
) -> None:
    sign_in(browser, world.url, WRITE)
    browser.get(f"{world.url}/services/web")
    assert browser.find_element(By.CSS_SELECTOR, "[data-weight]").text == "30%"
    wait_page(browser, "the live stream connected", lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "connected", 15)  # fmt: skip
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="promote"]').click()
    WebDriverWait(browser, 5).until(expected_conditions.alert_is_present())
    browser.switch_to.alert.accept()  # "Promote the rollout of web to its next step?"
    wait_page(
        browser,
        "the next weight shown",
        lambda b: any(e.text == "70%" for e in b.find_elements(By.CSS_SELECTOR, "[data-weight]")),
    )
    screenshot(browser, "service-promoted")
    browser.get(f"{world.url}/audit")
    assert "token:deployer" in browser.page_source
    assert "promote" in browser.page_source


def test_history_shows_a_field_diff_with_secret_looking_values_redacted(
    browser: webdriver.Chrome, world: World
) -> None:
    extra = process_service(
        "extra", port=free_port(), replicas=1, version="7", env={"DB_PASSWORD": SECRET_VALUE}
    )
    sha = commit(world.repo, {"extra.yaml": extra}, "extra: v7 with a password")
    sign_in(browser, world.url, READ)
    browser.get(f"{world.url}/history")
    wait_page(
        browser,
        "the revision in history",
        lambda b: b.find_elements(By.CSS_SELECTOR, f'article[data-revision="{sha}"]'),
    )
    article = browser.find_element(By.CSS_SELECTOR, f'article[data-revision="{sha}"]')
    text = article.text
    assert "spec.env.VERSION" in text and '"1"' in text and '"7"' in text
    assert "spec.env.DB_PASSWORD" in text and "(sensitive value)" in text
    assert SECRET_VALUE not in browser.page_source
    screenshot(browser, "history")
