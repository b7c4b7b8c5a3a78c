"""Headless Chromium for the /ui tests: Debian's `chromium` and
`chromium-driver`, driven by Selenium, reaching nothing outside this machine.

`.ci/install-browser` installs them when missing (root and apt); where that
cannot be done the tests skip and say so.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.waiting import wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless as root, and no background traffic of any kind (updates, sync,
# component downloads, field trials).
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Screenshots land here (gitignored), one per test that takes one.
ARTEFACTS = Path(__file__).resolve().parents[2] / "out" / "ui"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    absent = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if not absent:
        return None
    return (
        f"{' and '.join(absent)} not installed; `.ci/install-browser` installs Debian's "
        "chromium and chromium-driver (needs root and apt)"
    )


@contextmanager
def chromium(width: int = 1400, height: int = 1200) -> Iterator[WebDriver]:
    """A fresh headless Chromium (its own profile directory), quit on exit."""
    if (why := missing_browser()) is not None:
        pytest.skip(why)
    # Selenium Manager is never needed (both paths are given), but should it
    # run it must not report usage statistics over the network.
    os.environ["SE_AVOID_STATS"] = "true"
    profile = tempfile.mkdtemp(prefix="rumor-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_script_timeout(30)
        yield driver
    finally:
        if driver is not None:
            driver.quit()  # ends Chromium and chromedriver
        shutil.rmtree(profile, ignore_errors=True)


def until(read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """Poll `read()` until `ok(value)` (tests.waiting.wait_for) and return the
    value; on timeout the AssertionError also gives the last value read."""
    last: list[Any] = [None]

    def cond() -> bool:
        last[0] = read()
        return ok(last[0])

    try:
        wait_for(cond, timeout, what, step=0.05)
    except AssertionError as e:
        raise AssertionError(f"{e}; last read: {last[0]!r}") from None
    return last[0]


# The page as a person sees it: the innerText of each row's cells, in the
# page's order, keyed by the row's name (data-key, set by app.js from the
# member or model name).
_TABLE = """
return [...document.querySelectorAll(`#${arguments[0]} tbody tr`)].map(
  (tr) => [tr.dataset.key, [...tr.cells].map((td) => td.innerText.trim())]);
"""


def table(driver: WebDriver, table_id: str) -> dict[str, list[str]]:
    return dict(driver.execute_script(_TABLE, table_id))


def header(driver: WebDriver, table_id: str) -> list[str]:
    cells: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} thead th`)]"
        ".map((th) => th.innerText.trim());",
        table_id,
    )
    return cells


def visible_events(driver: WebDriver) -> list[list[str]]:
    """The event log's visible entries, top (newest) first: [time, type, member, ...]."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll('#events li')].filter((li) => !li.hidden)"
        ".map((li) => [...li.children].map((c) => c.innerText.trim()));"
    )
    return rows


def timing(driver: WebDriver) -> dict[str, float]:
    """Navigation timing (ms from navigation start): the load event's end, and
    the end of the page's first render of the cluster (its performance mark)."""
    out: dict[str, float] = driver.execute_script(
        "const nav = performance.getEntriesByType('navigation')[0];"
        "const first = performance.getEntriesByName('rumor-first-render')[0];"
        "return {load: nav.loadEventEnd, first_render: first ? first.startTime : -1};"
    )
    return out


def console_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path
