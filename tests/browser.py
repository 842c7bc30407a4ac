"""Headless Chromium for the dashboard's browser tests: Debian's chromium and chromedriver,
driven by Selenium (no browser download; `make test` and .ci/run install both)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: where browser tests leave their screenshots (kept after the run, for people to look at)
ARTIFACTS = Path(os.environ.get("HIFIDATA_TEST_ARTIFACTS", REPO / "test-artifacts"))


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        raise RuntimeError("the browser tests need Debian's chromium and chromium-driver "
                           "(apt-get install chromium chromium-driver; make test does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield session
    finally:
        session.quit()


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.1)


def screenshot(session, name: str) -> Path:
    """A full-page PNG in ARTIFACTS."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = session.execute_script("return document.body.scrollHeight")
    session.set_window_size(1400, height + 80)
    time.sleep(0.5)  # plotly redraws on resize
    path = ARTIFACTS / name
    session.save_screenshot(str(path))
    return path
