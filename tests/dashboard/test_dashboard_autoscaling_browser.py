"""The dashboard's autoscaling sections in a real browser (headless chromium) against a
real daemon: a service's horizontal autoscaler (count, bounds, metric readings, last
decision) and vertical recommendation, and the cluster page's node pools, with a node a
NodePool makes (a private Docker engine, through the shipped provider
examples/nodepool/local-engines) appearing on the open page without a reload."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import bar_fills, live_connected, screenshot, sign_in
from data_plane_helpers import stop_data_plane
from local_engines_helpers import delete_all, pool_yaml
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
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow

READ = "0123456789abcdef-read-token-auto"

#: Git asks 1 replica; the autoscaler's bounds are 2..3, so its first decision is 2. The
#: cpu request is large enough that an idle replica proposes fewer than 2 however busy the
#: machine is (the decision then names the bounds): at 100m, two replicas answering
#: probes on a loaded CI host read 47% against the target of 80, which proposes 2 by
#: itself.
AUTOSCALE = """  resources:
    requests: {cpu: 500m, memory: 64Mi}
  autoscale:
    minReplicas: 2
    maxReplicas: 3
    metrics:
      - {type: cpu, targetAverageUtilization: 80}
    vertical: {mode: Recommend}
"""


@dataclass
class World:
    repo: Path
    engines: Path
    daemon: DaemonProc

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    def status(self) -> dict[str, Any]:
        code, data = self.daemon.request(
            "GET", "/api/v1/status", headers={"Authorization": f"Bearer {READ}"}
        )
        assert code == 200, (code, data)
        return data


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dashboard-autoscaling")
    repo, state, engines = root / "repo", root / "state", root / "engines"
    init_repo(repo)
    tokens = root / "api-tokens"
    tokens.write_text(f"viewer:read:{READ}\n", encoding="utf-8")
    tokens.chmod(0o600)
    service = process_service("auto", port=free_port(), replicas=1) + AUTOSCALE
    commit(repo, {"auto.yaml": service}, "auto: autoscaled, min 2")
    daemon = DaemonProc(
        str(repo),
        state,
        "process",
        resync=0.3,
        extra=["--api-token-file", str(tokens), "--autoscale-sync", "1"],
    )
    world = World(repo, engines, daemon)
    try:
        yield world
    finally:
        daemon.stop()
        delete_all(engines, "workers")
        stop_data_plane(state)
        remove_cluster(process_runtime(state), cluster_of(state))


def text_of(browser: webdriver.Chrome, css: str) -> str:
    """The text of the first element ``css`` finds ("" without one). The page updates
    itself live: an element replaced between the find and the read is found again (CI
    once failed a wait on ``StaleElementReferenceException``)."""
    for _ in range(5):
        found = browser.find_elements(By.CSS_SELECTOR, css)
        try:
            return found[0].text if found else ""
        except StaleElementReferenceException:
            continue
    found = browser.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def test_a_service_page_shows_its_autoscaler_and_vertical_recommendation(
    browser: webdriver.Chrome, world: World
) -> None:
    """The autoscaler raises Git's 1 to its minimum 2: the page shows the count, the
    bounds, the cpu metric and the decision, and the second replica running, live."""
    sign_in(browser, world.url, READ)
    browser.get(f"{world.url}/services/auto")
    live_connected(browser)
    browser.execute_script("window.stillTheSamePage = 7")
    WebDriverWait(browser, 60).until(
        lambda b: "current 2 running · desired 2" in text_of(b, ".autoscale .hpa"),
        message=f"two running, desired 2: {text_of(browser, '.autoscale')!r}",
    )
    assert browser.execute_script("return window.stillTheSamePage") == 7  # no reload
    assert "bounds 2–3" in text_of(browser, ".autoscale .hpa")
    # The raise to 2 is the pass's decision (below minReplicas); the metric's row comes
    # with the autoscaler's first sync after it (every --autoscale-sync).
    WebDriverWait(browser, 30).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, ".autoscale table tbody tr"),
        message=f"the metric's row: {text_of(browser, '.autoscale')!r}",
    )
    rows = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, ".autoscale table tbody tr")
    ]
    assert [row[0] for row in rows] == ["cpu"], rows
    assert rows[0][2] == "80", rows  # the target
    assert text_of(browser, ".autoscale .decision").startswith("Last decision")
    # Once cpu was read (every --autoscale-sync), the decision says why the count is 2.
    WebDriverWait(browser, 30).until(
        lambda b: "held within bounds 2..3" in text_of(b, ".autoscale .decision"),
        message=f"the decision: {text_of(browser, '.autoscale .decision')!r}",
    )
    assert "cpu " in text_of(browser, ".autoscale .decision")
    assert text_of(browser, ".autoscale .vpa").startswith("Vertical (Recommend):")
    # A recommendation once enough usage samples came (one per sync), live too.
    WebDriverWait(browser, 30).until(
        lambda b: "requests.memory 64Mi -> " in text_of(b, ".autoscale .vpa"),
        message=f"a recommendation: {text_of(browser, '.autoscale .vpa')!r}",
    )
    assert browser.execute_script("return window.stillTheSamePage") == 7
    screenshot(browser, "service-autoscaling")


def test_the_cluster_page_shows_a_node_pool_and_its_new_node_live(
    browser: webdriver.Chrome, world: World
) -> None:
    """The page is open when the NodePool is committed: its row appears, then the node
    it makes (minNodes 1) and the decision that made it, without a reload."""
    sign_in(browser, world.url, READ)
    live_connected(browser)
    assert browser.find_elements(By.CSS_SELECTOR, "tr[data-pool]") == []
    browser.execute_script("window.stillTheSamePage = 8")
    commit(world.repo, {"pool.yaml": pool_yaml(world.engines, min_nodes=1)}, "a pool of workers")
    row = 'tr[data-pool="workers"]'
    WebDriverWait(browser, 120).until(
        lambda b: (
            b.find_elements(By.CSS_SELECTOR, f"{row} li[data-node^='workers-']")
            and "create 1" in text_of(b, row)
        ),
        message=f"the pool's node on the page: {text_of(browser, 'table.node-pools')!r}",
    )
    assert browser.execute_script("return window.stillTheSamePage") == 8  # no reload
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, f"{row} td")]
    assert cells[0] == "workers"
    assert cells[1] == "1 (1–2)", cells
    [node] = [n["name"] for n in world.status()["nodePools"][0]["nodes"]]
    assert node in cells[2], cells
    assert "0 → 1" in cells[3] and "below minNodes 1" in cells[3], cells
    # The node answers (a real engine): no "not answering" badge once observed.
    wait_for(
        "the pool's node ready",
        lambda: any(n["name"] == node and n["ready"] for n in world.status()["nodes"]),
        60,
    )
    WebDriverWait(browser, 30).until(
        lambda b: "not answering" not in text_of(b, row),
        message=f"the node shown answering: {text_of(browser, row)!r}",
    )
    # The bars are drawn as full as they say: vm's 200m of 2000m fills a tenth of its
    # bar, the new node's nothing (a low allocation drew a full bar before).
    bars = bar_fills(browser, "table.nodes")
    assert any(0 < label <= 10 for label, _ in bars), bars
    for label, drawn in bars:
        assert abs(drawn - label / 100) <= 0.02, (label, drawn)
    screenshot(browser, "cluster-node-pools")

    # The history page lists the scaling decisions under the revisions.
    browser.get(f"{world.url}/history")
    made = browser.find_elements(
        By.CSS_SELECTOR, 'table.scaling tr[data-kind="nodepool.scaled-up"]'
    )
    assert made, text_of(browser, "main")
    cells = [c.text for c in made[0].find_elements(By.TAG_NAME, "td")]
    assert cells[1:3] == ["NodePool/workers", "nodepool.scaled-up"], cells
    assert "workers: 0 -> 1 nodes" in cells[3], cells
    screenshot(browser, "history-scaling")
