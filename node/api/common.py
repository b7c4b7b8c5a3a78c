"""What every handler shares: headers, errors and trace ids.

Client mistakes get a 4xx with a JSON `{"error": ...}` body and affect nothing
else; a model with no ready replica is a 503 with Retry-After.
"""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .server import BodyRejected
from .server import read_body as _read_body

FORWARDED = "x-rumor-forwarded"
TRACE = "x-rumor-trace-id"
SERVED_BY = "x-rumor-served-by"
BUSY = "x-rumor-busy"
FINAL = "x-rumor-final-attempt"
#: A replica's answer headers that a forwarding node passes back to its client.
PASSED_HEADERS = ("content-type", SERVED_BY, TRACE, BUSY, "retry-after")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error(status: int, message: str, trace: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        {"error": message}, status_code=status, headers={TRACE: trace, **(headers or {})}
    )


def new_trace() -> str:
    return uuid.uuid4().hex


def trace_of(request: Request) -> str:
    return request.headers.get(TRACE) or new_trace()


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    try:
        return await _read_body(request, max_bytes, timeout_s)
    except BodyRejected as e:
        raise HTTPError(e.status, e.message, e.headers) from None
