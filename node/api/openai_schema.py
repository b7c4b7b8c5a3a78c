"""OpenAI-compatible requests, checked before anything runs, and the answers'
shapes (completions, chat completions, their stream chunks and errors).

Every malformed request is an `OpenAIError` with a 4xx and OpenAI's error
object; nothing else escapes the parsers (tests/node/test_openai_schema.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool", "developer")
#: Fields a request may carry; any other is refused (a typo must not be ignored).
COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "user",
    "frequency_penalty",
    "presence_penalty",
    "logprobs",
}
CHAT = COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
COMPLETION = COMMON | {"prompt", "echo", "suffix"}
MAX_MESSAGES = 4096


class OpenAIError(Exception):
    """An error answer: status, OpenAI's error object, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type = status, message, type_
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


@dataclass
class GenerationRequest:
    chat: bool
    model: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False


def _number(v: object, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad(f"'{name}' must be a number", name)
    if v < lo or v > hi or (lo_open and v == lo):
        raise bad(f"'{name}' must be in {'(' if lo_open else '['}{lo:g}, {hi:g}]", name)
    return float(v)


def _text(content: object, where: str) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad(
                    f"{where}.content[{i}]: only text parts are supported here, not {kind!r}",
                    "messages",
                )
            if not isinstance(part.get("text"), str):
                raise bad(f"{where}.content[{i}].text must be a string", "messages")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise bad(f"{where}.content must be a string or a list of text parts", "messages")


def parse_generation(body: bytes, chat: bool) -> GenerationRequest:
    """A /v1/chat/completions (`chat`) or /v1/completions request."""
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8") from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise bad(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise bad("the request body must be a JSON object")
    allowed = CHAT if chat else COMPLETION
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise bad(f"unknown field(s): {', '.join(map(repr, unknown))}", unknown[0])
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' is required (a model name from GET /v1/models)", "model")
    req = GenerationRequest(chat=chat, model=model)
    if chat:
        msgs = data.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise bad("'messages' must be a non-empty list", "messages")
        if len(msgs) > MAX_MESSAGES:
            raise bad(f"at most {MAX_MESSAGES} messages", "messages")
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise bad(f"{where} must be an object", "messages")
            role = m.get("role")
            if role not in ROLES:
                raise bad(f"{where}.role must be one of {', '.join(ROLES)}", "messages")
            req.messages.append({"role": role, "content": _text(m.get("content"), where)})
    else:
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise bad("'prompt' must be a non-empty string", "prompt")
        req.prompt = prompt
        if data.get("echo") not in (None, False) or data.get("suffix") not in (None, ""):
            raise bad("'echo' and 'suffix' are not supported", "echo")
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    mt = data.get(key)
    if mt is not None:
        if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
            raise bad(f"'{key}' must be an integer >= 1", key)
        req.max_tokens = mt
    if data.get("temperature") is not None:
        req.temperature = _number(data["temperature"], "temperature", 0, 2)
    if data.get("top_p") is not None:
        req.top_p = _number(data["top_p"], "top_p", 0, 1, lo_open=True)
    seed = data.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise bad("'seed' must be an integer in [0, 2**63)", "seed")
        req.seed = seed
    stop = data.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if (
            not isinstance(stops, list)
            or len(stops) > 16
            or not all(isinstance(s, str) and 0 < len(s) <= 256 for s in stops)
        ):
            raise bad("'stop' must be a string or a list of at most 16 strings", "stop")
        req.stop = tuple(stops)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("'stream' must be true or false", "stream")
    req.stream = stream
    opts = data.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"}:
            raise bad("'stream_options' may hold only 'include_usage'", "stream_options")
        if not stream:
            raise bad("'stream_options' needs 'stream': true", "stream_options")
        req.include_usage = bool(opts.get("include_usage", False))
    if data.get("n", 1) != 1:
        raise bad("only 'n': 1 is supported", "n")
    for knob in ("frequency_penalty", "presence_penalty"):
        if data.get(knob) not in (None, 0, 0.0):
            raise bad(f"'{knob}' is not supported (only 0)", knob)
    if data.get("logprobs") not in (None, False) or data.get("top_logprobs") is not None:
        raise bad("'logprobs' is not supported", "logprobs")
    if data.get("user") is not None and not isinstance(data["user"], str):
        raise bad("'user' must be a string", "user")
    return req


def usage_json(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def completion_json(
    req: GenerationRequest,
    rid: str,
    created: int,
    text: str,
    finish: str | None,
    usage: dict[str, Any],
) -> dict[str, Any]:
    if req.chat:
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": req.model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        "usage": usage,
    }


def chunk_json(
    req: GenerationRequest,
    rid: str,
    created: int,
    text: str | None,
    finish: str | None,
    first: bool = False,
) -> dict[str, Any]:
    if req.chat:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": req.model, "choices": [choice]}


def usage_chunk_json(
    req: GenerationRequest, rid: str, created: int, usage: dict[str, Any]
) -> dict[str, Any]:
    obj = "chat.completion.chunk" if req.chat else "text_completion"
    return {
        "id": rid,
        "object": obj,
        "created": created,
        "model": req.model,
        "choices": [],
        "usage": usage,
    }


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
