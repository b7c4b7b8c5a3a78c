"""The /ui page with 100 members, in a real browser: a fake node
(tests/e2e/fake_cluster.py) serves the same static files, a 100-member view
that changes on every read, bursts of 100 events a second, and an
`events-lost` that ends the first stream. Asserted: render times, updates that
keep applying, load fields no node sends today, peer strings shown as text,
and the reconnect after lost events.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.support.select import Select

from node.localcluster import read_line
from tests.e2e.browser import (
    chromium,
    console_errors,
    header,
    missing_browser,
    screenshot,
    table,
    timing,
    until,
    visible_events,
)
from tests.e2e.fake_cluster import HOSTILE

# Before any daemon or fake node starts.
pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = 100
LOST_AFTER = 300  # events on the first stream, then events-lost
DROP_AFTER = 300  # events on the second stream, then it ends
#: Budgets, each at least 3x the slowest of 13 runs on this 2-core VM, shared
#: with other work (Chromium 156): load event 98-328 ms; first render of 100
#: members 221-684 ms; one render (a read applied to three 100-row tables and
#: the chart) median 19-44 ms; the longest main-thread task while reads and
#: event bursts apply: none over 50 ms in most runs, 92 ms at worst.
LOAD_BUDGET_MS = 1000
FIRST_RENDER_BUDGET_MS = 2100
RENDER_MEDIAN_BUDGET_MS = 150
LONG_TASK_BUDGET_MS = 300


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.fake_cluster",
            "--members",
            str(MEMBERS),
            "--lost-after",
            str(LOST_AFTER),
            "--drop-after",
            str(DROP_AFTER),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = read_line(proc.stdout, 60)
        assert line, f"the fake node did not bind within 60 s ({proc.poll()})"
        yield json.loads(line)["http"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture(scope="module")
def page(fake: str) -> Iterator[WebDriver]:
    with chromium(height=1500) as driver:
        driver.get(f"http://{fake}/ui")
        until(lambda: timing(driver), lambda t: t["first_render"] > 0, 15, "the first render")
        yield driver


def stats(fake: str) -> dict:
    return httpx.get(f"http://{fake}/fake/stats", timeout=5).json()


def test_a_100_member_view_renders_fast(page: WebDriver) -> None:
    t = timing(page)
    print(f"100 members: load event {t['load']:.0f} ms, first render {t['first_render']:.0f} ms")
    assert 0 < t["load"] < LOAD_BUDGET_MS
    assert t["first_render"] < FIRST_RENDER_BUDGET_MS
    members = table(page, "members")
    assert len(members) == MEMBERS
    # Trouble first, clearly marked.
    keys = list(members)
    assert keys[:2] == ["m042", "m013"]
    assert members["m042"][1] == "dead" and members["m013"][1] == "suspect"
    assert page.find_element("id", "summary").text.split() == [
        "100",
        "members:",
        "98",
        "alive",
        "1",
        "suspect",
        "1",
        "dead",
    ]
    models = table(page, "models")
    assert models["llama"][1:3] == ["100", "98 / 100"]  # the suspect and the dead do not serve
    assert "m042: ready (dead)" in models["llama"][3] and "+ 88 more" in models["llama"][3]


def test_updates_keep_applying_without_blocking_the_page(page: WebDriver, fake: str) -> None:
    # Long tasks (main thread busy > 50 ms) and renders over 6 s of reads and
    # event bursts.
    measured = page.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const tasks = [];
        const observer = new PerformanceObserver((list) => {
          for (const e of list.getEntries()) tasks.push(e.duration);
        });
        observer.observe({ type: "longtask" });
        const t0 = performance.now();
        setTimeout(() => {
          observer.disconnect();
          const renders = performance.getEntriesByName("rumor-render")
            .filter((e) => e.startTime > t0).map((e) => e.duration);
          done({ tasks, renders });
        }, 6000);
        """
    )
    renders, tasks = measured["renders"], measured["tasks"]
    print(
        f"renders in 6 s: {len(renders)}, median {statistics.median(renders):.1f} ms, "
        f"max {max(renders):.1f} ms; long tasks: {[round(d) for d in tasks]}"
    )
    assert len(renders) >= 4  # one read a second kept being applied
    assert statistics.median(renders) < RENDER_MEDIAN_BUDGET_MS
    assert max(tasks, default=0) < LONG_TASK_BUDGET_MS

    # The counter the fake advances at 10/s per member is shown as it grows,
    # and requests/s is derived from it.
    cols = header(page, "load")
    completed, rate = cols.index("completed"), cols.index("req/s")
    first = int(table(page, "load")["m000"][completed])
    rows = until(
        lambda: table(page, "load"),
        lambda rows: int(rows["m000"][completed]) >= first + 20,
        10,
        "m000's completed counter to advance on the page",
    )
    assert 7 <= float(rows["m000"][rate]) <= 13

    # A status change in the view shows within a few reads.
    httpx.post(f"http://{fake}/fake/status/m077/dead", timeout=5).raise_for_status()
    until(lambda: table(page, "members")["m077"][1], lambda s: s == "dead", 5, "m077 dead")
    assert "2 dead" in page.find_element("id", "summary").text


def test_new_load_fields_show_without_code_changes(page: WebDriver) -> None:
    cols = header(page, "load")
    for field in ("queue", "in_flight", "kv use", "kv_used", "kv_total", "prefix_hit_rate"):
        assert field in cols
    assert cols.index("kv use") < cols.index("kv_total") < cols.index("kv_used")
    rows = table(page, "load")
    assert rows["m000"][cols.index("kv use")].endswith("%")
    assert rows["m009"][cols.index("prefix_hit_rate")] == "0.9"
    options = [o.text for o in Select(page.find_element("id", "chart-metric")).options]
    assert {"req/s", "queue + in_flight", "kv_used", "prefix_hit_rate"} <= set(options)


def test_peer_strings_are_shown_as_text(page: WebDriver) -> None:
    rows = table(page, "members")
    assert HOSTILE in rows
    assert HOSTILE in rows[HOSTILE][9]  # its tag, shown literally
    assert HOSTILE in table(page, "models")
    assert page.execute_script("return document.querySelectorAll('main img').length") == 0
    assert page.title == "rumor · m000"  # the payload would have set it to 'pwned'
    assert console_errors(page) == []  # nothing broke the CSP, nothing failed to load


def test_after_events_lost_or_a_dropped_stream_the_page_rereads_and_reconnects(
    page: WebDriver, fake: str
) -> None:
    st = until(
        lambda: stats(fake),
        lambda s: len(s["stream_ended"]) == 2 and len(s["stream_opened"]) >= 3,
        20,
        "stream 1 to end with events-lost, stream 2 to drop, and a third stream",
    )
    opened, reads = st["stream_opened"], st["read_times"]
    for (how, ended), reopened in zip(st["stream_ended"], opened[1:], strict=False):
        # A new stream after the backoff (250 ms, doubling only while opens fail)...
        assert 0 <= reopened - ended < 2.0, (how, ended, reopened)
        # ...and the view read again as soon as it opened: the page polls once
        # a second, so a read this close to the open is the re-read (a poll
        # lands here by chance 1 time in 3).
        assert any(0 <= t - reopened < 0.3 for t in reads), (how, reopened, reads[-10:])
    print(f"streams opened {opened}, ended {st['stream_ended']}")
    until(
        lambda: page.find_element("id", "conn").get_attribute("data-state"),
        lambda s: s == "live",
        10,
        "the stream to be live again",
    )
    # The log says both, newest first (record updates are hidden by default).
    assert [e[1] for e in visible_events(page)] == ["stream-dropped", "events-lost"]


def test_events_newest_first_and_filtered_by_type(page: WebDriver) -> None:
    Select(page.find_element("id", "event-filter")).select_by_visible_text("all types")
    events = until(
        lambda: visible_events(page),
        lambda evs: len(evs) > 100,
        10,
        "the update bursts in the log",
    )
    times = [e[0] for e in events]
    assert times == sorted(times, reverse=True)  # newest first
    assert len(events) <= 500
    # Record updates are capped so that they cannot push a member-dead out.
    assert sum(e[1] == "member-update" for e in events) <= 100

    Select(page.find_element("id", "event-filter")).select_by_visible_text("member-update")
    assert {e[1] for e in visible_events(page)} == {"member-update"}
    screenshot(page, "ui-100-members")
