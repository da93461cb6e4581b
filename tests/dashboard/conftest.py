"""Fixtures: ``browser``, one headless chromium for the whole session (browser_helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_helpers import start_browser
from selenium import webdriver


@pytest.fixture(scope="session")
def browser() -> Iterator[webdriver.Chrome]:
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()
