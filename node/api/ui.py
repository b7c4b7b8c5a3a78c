"""`GET /ui`: the live cluster page, served by every node from `node/ui/`.

The page is static (HTML, one script, one stylesheet, no build step, nothing
fetched from elsewhere) and only reads: it draws `GET /v1/cluster` and the
`GET /v1/events` stream in the browser. The files are a fixed list read from
the package once, so no request path ever reaches the file system.

Every answer carries a strict Content-Security-Policy (scripts and styles from
this origin only, no inline code, no framing, fetches to this origin only) and
`X-Content-Type-Options: nosniff`; the script renders peer-provided strings as
text, never as markup (node/ui/app.js).
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

#: URL path -> (file in node/ui/, content type). Nothing else is served.
ASSETS = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/chart.js": ("chart.js", "text/javascript; charset=utf-8"),
    "/ui/dom.js": ("dom.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
    "/ui/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

#: `default-src 'none'` then only what the page needs; `connect-src 'self'`
#: covers the fetches and the EventSource. No 'unsafe-inline' anywhere: an
#: injected <script> or style attribute would not run even if one got through.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    # Revalidate each time (the ETag makes that a 304), so an upgraded node
    # serves its new page at once.
    "cache-control": "no-cache",
}


@functools.cache
def _asset(filename: str) -> tuple[bytes, str]:
    """The file's bytes and a strong ETag (read once per process)."""
    body = resources.files("node").joinpath("ui", filename).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


async def _serve(request: Request) -> Response:
    filename, content_type = ASSETS[request.url.path]
    body, etag = _asset(filename)
    headers = {**SECURITY_HEADERS, "etag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=content_type, headers=headers)


def ui_routes() -> list[BaseRoute]:
    """The page's routes, to append to the daemon's (or a test server's) routes.
    (Starlette redirects `/ui/` to `/ui`.)"""
    return [Route(path, _serve, methods=["GET", "HEAD"]) for path in ASSETS]
