"""The model name on the way in (rumor's name -> the engine's served name) and on
the way out (served name -> rumor's name), without buffering a streamed answer.

Out: the engine's JSON and SSE answers carry `"model":"<served>"` in every
object (vLLM serialises with pydantic, SGLang with orjson: compact, no
spaces). Rather than parse each SSE event (a JSON decode and encode per token),
the byte sequence `"model":"<served>"` is replaced. That is safe in valid JSON:
inside a string every `"` is escaped, so an unescaped `"model":"` can only be
a key followed by a string value; and only that exact value is replaced. A
sequence split across two chunks is caught by holding back, at the end of a
chunk, the longest tail that could begin one (never more than the pattern's
length; an SSE event ends in a blank line, which cannot, so events pass through
as they come).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidInput


def rewrite_request(body: bytes | Mapping[str, Any], served_name: str) -> bytes:
    """The request body as JSON bytes with `model` set to the served name.
    Raises InvalidInput (the client's fault: a 400) for a body that is not a
    JSON object."""
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            obj = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidInput(f"the request body is not JSON: {e}") from None
    else:
        obj = dict(body)
    if not isinstance(obj, dict):
        raise InvalidInput("the request body must be a JSON object")
    obj["model"] = served_name
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class ModelNameRewriter:
    """Replaces the served name with rumor's in a stream of JSON or SSE bytes."""

    def __init__(self, served_name: str, name: str) -> None:
        literals = {
            json.dumps(served_name).encode(),  # non-ASCII escaped, as json.dumps writes it
            json.dumps(served_name, ensure_ascii=False).encode(),  # as pydantic and orjson do
        }
        target = json.dumps(name).encode()
        self._pairs = [
            (b'"model"' + sep + lit, b'"model"' + sep + target)
            for lit in sorted(literals)
            for sep in (b":", b": ")
        ]
        self._hold = max(len(p) for p, _ in self._pairs) - 1
        self._carry = b""
        self.replaced = 0

    def feed(self, chunk: bytes) -> bytes:
        """Bytes that can be passed on now (possibly fewer than fed)."""
        buf = self._carry + chunk if self._carry else chunk
        if b'"model"' in buf:
            for pattern, replacement in self._pairs:
                n = buf.count(pattern)
                if n:
                    self.replaced += n
                    buf = buf.replace(pattern, replacement)
        keep = self._partial_tail(buf)
        if keep:
            self._carry = buf[-keep:]
            return buf[:-keep]
        self._carry = b""
        return buf

    def flush(self) -> bytes:
        """What is still held back, at the end of the body."""
        out, self._carry = self._carry, b""
        return out

    def _partial_tail(self, buf: bytes) -> int:
        """The length of the longest tail of `buf` that begins a pattern."""
        start = buf.find(b'"', max(0, len(buf) - self._hold))  # the earliest: the longest
        while start != -1:
            tail = buf[start:]
            if any(p.startswith(tail) for p, _ in self._pairs):
                return len(tail)
            start = buf.find(b'"', start + 1)
        return 0
