"""The /ui page in a real browser against real daemons: three `rumor node`
processes on loopback with an encrypted keyring and an admin token (the
README's setups), headless Chromium on one node's page, and what a person
would see there, including a SIGKILLed node turning dead without a reload.

The screenshot lands in out/ui/ (printed in the log); docs/figures/ui.png is
a copy of one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gossip.crypto import Keyring
from node.api.ui import CSP
from node.localcluster import LocalCluster
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
from tests.e2e.test_daemons import MLP, status_of, view
from tests.waiting import wait_for

# Before any daemon or fake node starts.
pytestmark = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))

TOKEN = "ui-test-admin-token-7f3a"
TRANSFORMER = {
    "inputs": [{"name": "input", "shape": [1, 32], "datatype": "INT64", "data": list(range(32))}]
}
HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"
NODES = ("n0", "n1", "n2")
#: The page loads (navigation timing: the load event) in under 1 s, and shows
#: the cluster (its first-render mark) within 1.2 s. Over 20 runs on this busy
#: 2-core host: 86-254 ms and 128-342 ms, so 3.9x and 3.5x headroom.
LOAD_BUDGET_MS = 1000
FIRST_RENDER_BUDGET_MS = 1200
#: SIGKILL to "dead" on the page: 5.9-12.4 s over 19 runs on this busy 2-core
#: host, and 3 daemons alone take as long (6.6-12 s): with one peer left to
#: confirm, suspicion runs to its longest, 3 s times 1 + local health, which is
#: 2 here. The page adds one read, 50 ms after the member-dead event. More than
#: three times the slowest run (docs/benchmarks.md).
DEAD_DEADLINE_S = 40.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("ui-cluster")
    keyring, token = tmp / "keyring.json", tmp / "admin-token"
    keyring.write_text(Keyring.generate().dump())
    token.write_text(TOKEN)
    secure = ["--admin-token-file", str(token)]
    with LocalCluster(tmp, keyring=keyring) as c:
        c.start("n0", models=["mlp=builtin:mlp"], extra=secure)
        c.start("n1", models=["transformer=builtin:transformer"], join=["n0"], extra=secure)
        c.start("n2", join=["n0"], extra=secure)
        for n in NODES:
            wait_for(
                lambda n=n: [m["status"] for m in view(c.http(n))["members"]] == ["alive"] * 3,
                30,
                f"{n} to see 3 alive members",
            )
        yield c


def admin(cluster: LocalCluster, node: str, method: str, path: str, body: object) -> None:
    r = httpx.request(
        method,
        f"http://{cluster.http(node)}{path}",
        json=body,
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert r.status_code in (200, 201), r.text


def test_the_page_shows_the_cluster_live_and_a_killed_node_dead(cluster: LocalCluster) -> None:
    # Operator data through the admin API (token required): a placed model
    # with a target, and a tag whose value is markup, set on another node.
    admin(cluster, "n1", "POST", "/v1/catalog", {"name": "tiny", "source": "builtin:mlp"})
    admin(cluster, "n1", "PUT", "/v1/catalog/tiny/replicas", {"replicas": 2})
    admin(cluster, "n1", "PUT", "/v1/node/tags", {"zone": "eu", "note": HOSTILE})

    # Every node serves the page, with its security headers.
    for n in NODES:
        r = httpx.get(f"http://{cluster.http(n)}/ui", timeout=5)
        assert r.status_code == 200 and r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"

    with chromium(height=1060) as driver:
        driver.get(f"http://{cluster.http('n0')}/ui")
        # Shown as soon as the first read is drawn; the load event has passed by then.
        until(lambda: timing(driver), lambda t: t["first_render"] > 0, 10, "the first render")
        t = timing(driver)
        print(f"page load: load event {t['load']:.0f} ms, first render {t['first_render']:.0f} ms")
        assert 0 < t["load"] < LOAD_BUDGET_MS
        assert t["first_render"] < FIRST_RENDER_BUDGET_MS
        driver.execute_script("window.rumorTestNoReload = 'same page';")

        assert driver.find_element("id", "self-name").text == "n0"
        members = until(
            lambda: table(driver, "members"),
            all_alive,
            10,
            "three alive members",
        )
        assert "this page" in members["n0"][0]
        assert members["n0"][5] == cluster.http("n0")  # its http address
        assert "mlp" in members["n0"][8] and "transformer" in members["n1"][8]

        # The tag is peer data: shown as text, never parsed as markup.
        members = until(
            lambda: table(driver, "members"),
            lambda rows: HOSTILE in rows["n1"][9],
            10,
            "n1's tags",
        )
        assert "zone=eu" in members["n1"][9]
        assert driver.execute_script("return document.querySelectorAll('main img').length") == 0
        assert TOKEN not in driver.page_source

        # Models: loaded by flag (no target), and placed with a target of 2.
        models = until(
            lambda: table(driver, "models"),
            lambda rows: "tiny" in rows and rows["tiny"][2] == "2 / 2",
            30,
            "tiny placed on 2 ready replicas",
        )
        assert models["mlp"][1:3] == ["-", "1"] and "n0: ready" in models["mlp"][3]
        assert models["transformer"][1:3] == ["-", "1"]
        assert models["tiny"][3].count(": ready") == 2

        # The same cluster from another node's page.
        driver.switch_to.new_window("tab")
        driver.get(f"http://{cluster.http('n1')}/ui")
        other = until(
            lambda: table(driver, "members"),
            all_alive,
            10,
            "n1's page to show three alive members",
        )
        assert driver.find_element("id", "self-name").text == "n1"
        assert "this page" in other["n1"][0]
        driver.close()
        driver.switch_to.window(driver.window_handles[0])

        # Load: requests into n1 for a model on n0 (forwarded) and for one on
        # n1 show up as requests/s; they keep flowing while n2 is killed.
        stop = threading.Event()
        clients = [
            threading.Thread(target=_traffic, args=(cluster.http("n1"), model, body, stop))
            for model, body in (("mlp", MLP), ("transformer", TRANSFORMER))
        ]
        for c in clients:
            c.start()
        try:
            rate_col = header(driver, "load").index("req/s")
            until(
                lambda: table(driver, "load"),
                lambda rows: (
                    _number(rows["n0"][rate_col]) > 0 and _number(rows["n1"][rate_col]) > 0
                ),
                15,
                "requests/s above 0 on n0 and n1",
            )

            # SIGKILL n2: the page, never reloaded, shows it dead.
            cluster.kill("n2")
            killed = time.monotonic()
            until(
                lambda: (table(driver, "members")["n2"][1], _status(cluster, "n0", "n2")),
                lambda seen: seen[0] == "dead",
                DEAD_DEADLINE_S,
                "the page to show n2 dead (page, n0's API)",
            )
            print(f"n2 shown dead on the page {time.monotonic() - killed:.2f} s after the SIGKILL")
            assert driver.execute_script("return window.rumorTestNoReload") == "same page"
            summary = driver.find_element("id", "summary").text
            assert "1 dead" in summary and "2 alive" in summary
            until(
                lambda: visible_events(driver),
                lambda evs: any(e[1:3] == ["member-dead", "n2"] for e in evs),
                5,
                "member-dead n2 in the event log",
            )
            assert driver.find_element("id", "conn").get_attribute("data-state") == "live"
            path = screenshot(driver, "ui-real-cluster")
        finally:
            stop.set()
            for c in clients:
                c.join(30)
        assert not any(c.is_alive() for c in clients)
        _keep_screenshot(path)
        assert console_errors(driver) == []


def _traffic(http: str, model: str, body: dict, stop: threading.Event) -> None:
    """One closed-loop client of `model` through `http` until `stop` (answers
    are not checked here: tests/e2e/test_daemons.py does that)."""
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            client.post(f"http://{http}/v2/models/{model}/infer", json=body)


def all_alive(rows: dict[str, list[str]]) -> bool:
    return sorted(rows) == list(NODES) and all(r[1] == "alive" for r in rows.values())


def _status(cluster: LocalCluster, observer: str, member: str) -> str:
    try:
        return str(status_of(cluster.http(observer), member))
    except httpx.HTTPError as e:
        return repr(e)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0  # "-": not reported


def _keep_screenshot(path: Path) -> None:
    """RUMOR_UI_FIGURE=1 copies the screenshot to docs/figures/ui.png (the README's)."""
    if os.environ.get("RUMOR_UI_FIGURE") == "1":
        figure = Path(__file__).resolve().parents[2] / "docs" / "figures" / "ui.png"
        figure.write_bytes(path.read_bytes())
        print(f"copied to {figure}")
