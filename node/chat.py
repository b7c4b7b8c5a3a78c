"""`rumor chat`: talk to an LLM through any node, the reply streamed as it is
generated (the OpenAI-compatible API; the node need not hold the model)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_chat_parser(sub: Any) -> None:
    chat = sub.add_parser(
        "chat",
        help="chat with an LLM through any node, streaming the reply",
        description="Send a message (or, without one, read messages from the terminal, "
        "one per line, keeping the conversation) and stream the reply.",
    )
    chat.add_argument("--http", required=True, metavar="HOST:PORT", help="any node")
    chat.add_argument("model")
    chat.add_argument("message", nargs="?", help="one message (default: an interactive session)")
    chat.add_argument("--system", help="a system prompt")
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--seed", type=int)
    chat.set_defaults(func=cmd_chat)


def stream_reply(
    base: str, model: str, messages: list[dict[str, str]], args: argparse.Namespace
) -> str:
    """POST one chat completion and print its text as it arrives; returns it."""
    import httpx

    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
    }
    if args.seed is not None:
        body["seed"] = args.seed
    parts = []
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=120) as r:
        if r.status_code != 200:
            r.read()
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            raise RuntimeError(f"{r.status_code}: {message}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"].get("message", "the stream broke"))
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content") or ""
                parts.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(parts)


def cmd_chat(args: argparse.Namespace) -> int:
    import httpx

    base = f"http://{args.http}"
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    try:
        if args.message is not None:
            stream_reply(
                base, args.model, [*messages, {"role": "user", "content": args.message}], args
            )
            return 0
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                return 0
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line.rstrip("\n")})
            reply = stream_reply(base, args.model, messages, args)
            messages.append({"role": "assistant", "content": reply})
    except (httpx.HTTPError, RuntimeError) as e:
        print(f"rumor chat: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
