"""A real browser for the dashboard's tests: Debian's chromium driven by chromedriver
through selenium, headless, one per test session (starting it is the slow part).

``.ci/run`` installs ``chromium`` and ``chromium-driver``; a machine without them FAILS
these tests with the packages to install (never skips).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

#: Where screenshots go (CI keeps them as artifacts): $GITORCH_ARTIFACTS/dashboard.
ARTIFACTS = Path(os.environ.get("GITORCH_ARTIFACTS", "/tmp/gitorch-artifacts")) / "dashboard"


def start_browser() -> webdriver.Chrome:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        raise AssertionError(
            f"missing {', '.join(missing)}: apt-get install chromium chromium-driver (.ci/run does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    browser.set_page_load_timeout(30)
    return browser


def screenshot(browser: webdriver.Chrome, name: str) -> Path:
    """Save the page as ``ARTIFACTS/NAME.png`` and return the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def sign_in(browser: webdriver.Chrome, url: str, token: str) -> None:
    """Sign in to the dashboard at ``url`` with an API token (the login form)."""
    browser.delete_all_cookies()
    browser.get(f"{url}/login")
    field = browser.find_element(By.NAME, "token")
    field.send_keys(token)
    field.submit()
    WebDriverWait(browser, 15).until(expected_conditions.url_to_be(f"{url}/"))


def live_connected(browser: webdriver.Chrome, timeout: float = 15) -> None:
    """Wait until the page's live stream (server-sent events) is connected."""
    WebDriverWait(browser, timeout).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "connected",
        message="the live stream connected",
    )


def bar_fills(browser: webdriver.Chrome, scope: str = "body") -> list[tuple[int, float]]:
    """Each bar under ``scope``: the share it says (its ``aria-label``, in %) and the
    share of its width the browser really filled (from the drawn boxes, so a bar the
    page's styles or CSP draw wrong is seen as drawn)."""
    found = browser.execute_script(
        """
        return Array.from(document.querySelectorAll(arguments[0] + ' .bar')).map(bar => {
          const whole = bar.getBoundingClientRect().width;
          const fill = bar.querySelector('.fill');
          const filled = fill ? fill.getBoundingClientRect().width : whole;
          return [bar.getAttribute('aria-label'), whole ? filled / whole : 0];
        });
        """,
        scope,
    )
    return [(int(str(label).rstrip("%")), float(share)) for label, share in found]
