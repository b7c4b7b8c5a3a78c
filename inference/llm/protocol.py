"""The engine host's wire format: length-prefixed msgpack frames on a stream socket.

A frame is a 4-byte big-endian length, then one msgpack map. `FrameDecoder` is
sans-IO (feed bytes, take messages), so both ends and the tests share it.

Parent to child:
    {"t": "add", "id": str, "ids": [int], "p": SamplingParams.to_wire()}
    {"t": "abort", "id": str}
    {"t": "ask", "q": int, "what": "stats" | "hashes" | "events", "cursor": int}
    {"t": "stop"}
Child to parent:
    {"t": "ready", "info": ModelInfo.to_wire(), "tok": LLMTokenizer.to_wire()}
    {"t": "fatal", "error": str}                 the engine could not load
    {"t": "out", "o": [RequestOutput.to_wire()]}  one frame per engine step
    {"t": "err", "id": str, "kind": "invalid" | "internal", "msg": str}
    {"t": "reply", "q": int, "v": ...}
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

#: A frame longer than this is a broken peer, not a message (a real model's
#: tokenizer.json, the largest frame, is tens of MB).
MAX_FRAME = 512 * 2**20
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The other end sent bytes that are not a frame of this protocol."""


def encode_frame(msg: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(msg, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Append received bytes; return every message they complete."""
        self._buf += data
        out: list[dict[str, Any]] = []
        while len(self._buf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise ProtocolError(f"frame of {n} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < _HEADER.size + n:
                break
            body = bytes(self._buf[_HEADER.size : _HEADER.size + n])
            del self._buf[: _HEADER.size + n]
            try:
                msg = msgpack.unpackb(body, raw=False, strict_map_key=True)
            except Exception as e:
                raise ProtocolError(f"undecodable frame: {e}") from None
            if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                raise ProtocolError("a frame must be a map with a string 't'")
            out.append(msg)
        return out
