"""`GET /ui` and its files (node/api/ui.py): what is served, with which
headers, and static checks that the page keeps to its CSP and renders peer
data as text. The page itself is tested in a browser in tests/e2e/test_ui*.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest
from starlette.applications import Starlette

from node.api.ui import ASSETS, CSP, ui_routes

UI = resources.files("node").joinpath("ui")


def client() -> httpx.AsyncClient:
    app = Starlette(routes=ui_routes())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


@pytest.mark.parametrize("path", sorted(ASSETS))
async def test_each_file_is_served_with_its_type_and_the_security_headers(path: str) -> None:
    async with client() as c:
        r = await c.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == ASSETS[path][1]
    assert r.content == UI.joinpath(ASSETS[path][0]).read_bytes()
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"


def test_the_csp_allows_no_inline_code_and_nothing_from_elsewhere() -> None:
    rules = dict(rule.strip().split(" ", 1) for rule in CSP.split(";"))
    assert rules["default-src"] == "'none'"
    assert rules["script-src"] == "'self'"
    assert rules["style-src"] == "'self'"
    assert rules["connect-src"] == "'self'"
    assert rules["frame-ancestors"] == "'none'"
    assert "unsafe" not in CSP and "*" not in CSP and "http" not in CSP


async def test_an_unchanged_file_is_a_304_by_its_etag() -> None:
    async with client() as c:
        first = await c.get("/ui/app.js")
        again = await c.get("/ui/app.js", headers={"if-none-match": first.headers["etag"]})
        other = await c.get("/ui/app.js", headers={"if-none-match": '"stale"'})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["content-security-policy"] == CSP
    assert other.status_code == 200


@pytest.mark.parametrize(
    "path", ["/ui/nope.js", "/ui/../pyproject.toml", "/ui/%2e%2e/node/api/app.py", "/ui/ui.py"]
)
async def test_nothing_but_the_listed_files_is_served(path: str) -> None:
    async with client() as c:
        r = await c.get(path)
    assert r.status_code == 404


async def test_the_page_only_reads() -> None:
    async with client() as c:
        r = await c.post("/ui")
    assert r.status_code == 405


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_the_page_has_no_inline_script_or_style_and_loads_only_listed_files() -> None:
    html = UI.joinpath("index.html").read_text()
    parser = _Tags()
    parser.feed(html)
    referenced = set()
    for tag, attrs in parser.tags:
        assert tag != "style"
        assert "style" not in attrs and not any(a.startswith("on") for a in attrs), (tag, attrs)
        if tag == "script":
            assert attrs.get("src"), "inline <script>"
        for key in ("src", "href"):
            value = attrs.get(key)
            if value and value.startswith("/ui"):
                referenced.add(value)
            elif value:
                assert value.startswith("/v1/"), f"{tag} {key}={value}: only this node's files"
    assert {"/ui/app.js", "/ui/style.css", "/ui/favicon.svg"} <= referenced <= set(ASSETS)


def test_every_file_of_the_page_is_listed_and_every_import_resolves() -> None:
    files = {p.name for p in UI.iterdir() if p.is_file()}
    assert files == {name for name, _ in ASSETS.values()}
    for name in files:
        if name.endswith(".js"):
            for imported in re.findall(r'from "\./([\w.]+)"', UI.joinpath(name).read_text()):
                assert imported in files, f"{name} imports {imported}"


@pytest.mark.parametrize("name", ["app.js", "chart.js", "dom.js"])
def test_the_scripts_never_turn_data_into_markup_or_code(name: str) -> None:
    lines = UI.joinpath(name).read_text().splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith("//"))  # not comments
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        'setAttribute("style"',
        "javascript:",
    ):
        assert sink not in code, f"{name} uses {sink}"
