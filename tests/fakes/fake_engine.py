"""A fake vLLM / SGLang server for tests without a GPU: the wire formats, the timing
and the failures, no model.

Speaks what vLLM 0.32 and SGLang serve (checked against captures of a real
vLLM 0.32.0 on CPU, tests/inference/remote/data/): POST /v1/completions and
/v1/chat/completions (JSON, or SSE `data: {...}` chunks ending `data: [DONE]`,
a usage chunk last when `stream_options.include_usage`), GET /health,
/v1/models, /metrics (vLLM's or SGLang's names), and OpenAI-style errors. With
a `FakeKVPublisher` it publishes KV events like vLLM's prefix cache: the prompt's
token ids are its UTF-8 bytes, full blocks are cached (LRU, `kv_capacity_blocks`)
and stored/removed events published per request.

Raw h11 over trio rather than a framework, so a test controls everything a
real engine can do wrong: `die()` drops the listener and every connection at
once; `settings.health = "hang"` never answers /health; `hang_after_chunks`
stops a stream mid-way; `fail_status` answers 5xx; `metrics = "garbage"`.

In a test:

    fake = FakeEngine(FakeSettings(kind="vllm", served_names=("m",)))
    async with trio.open_nursery() as n:
        port = await n.start(fake.serve)

As a process (the e2e tests start two beside two daemons):

    python -m tests.fakes.fake_engine --port 8001 --kind vllm --served-name m \\
        --kv-events-port 5557 --kv-replay-port 5558 --ttft 0.05 --itl 0.01

It prints `READY <port>` when listening. POST /fake/control with a JSON object
of `FakeSettings` fields changes them at run time (e.g. {"health": "hang"});
{"kv_garbage": true} sends three malformed KV-event messages;
GET /fake/state returns its counters.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from .fake_kv import FakeKVPublisher, removed, stored


@dataclass
class FakeSettings:
    kind: str = "vllm"  # vllm or sglang: the /metrics names
    served_names: tuple[str, ...] = ("fake-model",)
    ttft_s: float = 0.0  # before the first token
    itl_s: float = 0.0  # between tokens
    health: str = "ok"  # ok, hang (never answers), 503
    fail_status: int = 0  # answer inference requests with this status (e.g. 500)
    hang_after_chunks: int = -1  # >= 0: stream this many chunks, then hang
    metrics: str = "ok"  # ok, garbage, missing (no load gauges), empty
    load: dict[str, float] = field(default_factory=dict)  # overrides: running, waiting, ...
    block_size: int = 16
    kv_capacity_blocks: int = 256
    num_gpu_blocks: int = 1000


@dataclass
class FakeCounters:
    requests: int = 0
    completed: int = 0
    disconnects: int = 0  # clients that went away before the answer's end
    in_flight: int = 0
    health_checks: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


class FakeEngine:
    def __init__(self, settings: FakeSettings | None = None,
                 kv: FakeKVPublisher | None = None) -> None:
        self.settings = settings or FakeSettings()
        self.kv = kv
        self.counters = FakeCounters()
        self.port = 0
        self.disconnected = trio.Event()  # set at each client disconnect mid-answer
        self._cache: OrderedDict[bytes, None] = OrderedDict()  # block hash -> (LRU)
        self._scope: trio.CancelScope | None = None
        self._listeners: list[trio.SocketListener] = []
        self._streams: set[trio.SocketStream] = set()

    # -- lifecycle ------------------------------------------------------------------

    async def serve(self, port: int = 0, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            self._listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            self.port = self._listeners[0].socket.getsockname()[1]
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, self._listeners)

    def drop_connections(self) -> None:
        """Close every open connection but keep listening (a keep-alive timeout)."""
        for stream in list(self._streams):
            stream.socket.close()

    def die(self) -> None:
        """Stop at once, as a killed process: no more answers, every connection reset."""
        for listener in self._listeners:
            listener.socket.close()
        for stream in list(self._streams):
            stream.socket.close()
        if self._scope is not None:
            self._scope.cancel()

    # -- HTTP -----------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        self._streams.add(stream)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read_request(conn, stream)
                if request is None:
                    return
                await self._route(conn, stream, request, body)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return
        finally:
            self._streams.discard(stream)
            await trio.aclose_forcefully(stream)

    async def _route(self, conn: h11.Connection, stream: trio.SocketStream,
                     request: h11.Request, body: bytes) -> None:
        path = request.target.decode().split("?")[0]
        method = request.method.decode()
        s = self.settings
        if path == "/health" and method == "GET":
            self.counters.health_checks += 1
            if s.health == "hang":
                await trio.sleep_forever()
            await _send(conn, stream, 503 if s.health == "503" else 200, b"", "text/plain")
        elif path == "/v1/models" and method == "GET":
            data = [{"id": n, "object": "model", "created": int(time.time()), "owned_by": s.kind,
                     "root": n, "parent": None, "max_model_len": 4096} for n in s.served_names]
            await _send_json(conn, stream, 200, {"object": "list", "data": data})
        elif path == "/metrics" and method == "GET":
            await _send(conn, stream, 200, self._metrics().encode(),
                        "text/plain; version=0.0.4; charset=utf-8")
        elif path in ("/v1/completions", "/v1/chat/completions") and method == "POST":
            self.counters.headers.append({k.decode().lower(): v.decode()
                                          for k, v in request.headers})
            await self._inference(conn, stream, path, body)
        elif path == "/fake/control" and method == "POST":
            for key, value in json.loads(body).items():
                if key == "kv_garbage":  # not a setting: send malformed KV events now
                    self._kv_garbage()
                    continue
                if key == "served_names":
                    value = tuple(value)
                setattr(s, key, value)
            await _send_json(conn, stream, 200, dataclasses.asdict(s))
        elif path == "/fake/state" and method == "GET":
            state = dataclasses.asdict(self.counters)
            state.pop("bodies")
            state.pop("headers")
            await _send_json(conn, stream, 200, state)
        else:
            await _error(conn, stream, 404, f"no route {method} {path}", "NotFoundError")

    async def _inference(self, conn: h11.Connection, stream: trio.SocketStream, path: str,
                         body: bytes) -> None:
        s = self.settings
        try:
            req = json.loads(body)
            assert isinstance(req, dict)
        except (ValueError, AssertionError):
            await _error(conn, stream, 400, "the body is not a JSON object", "BadRequestError")
            return
        self.counters.requests += 1
        self.counters.bodies.append(req)
        if req.get("model") not in s.served_names:
            await _error(conn, stream, 404, f"The model `{req.get('model')}` does not exist.",
                         "NotFoundError", param="model")
            return
        if s.fail_status:
            await _error(conn, stream, s.fail_status, "injected failure", "InternalServerError")
            return
        chat = path.endswith("chat/completions")
        prompt = (
            "".join(f"{m.get('role')}: {m.get('content')}\n" for m in req.get("messages", []))
            if chat else str(req.get("prompt", ""))
        )
        tokens = list(prompt.encode())
        n_out = int(req.get("max_tokens") or 16)
        self.counters.in_flight += 1
        finished = False
        try:
            self._prefix(tokens)
            await trio.sleep(s.ttft_s)
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
            model = req["model"]
            usage = {"prompt_tokens": len(tokens), "total_tokens": len(tokens) + n_out,
                     "completion_tokens": n_out}
            if req.get("stream"):
                await self._stream(conn, stream, chat, rid, model, n_out, usage,
                                   bool((req.get("stream_options") or {}).get("include_usage")))
            else:
                await trio.sleep(s.itl_s * (n_out - 1))
                await _send_json(conn, stream, 200, _full(chat, rid, model, n_out, usage))
            finished = True
            self.counters.completed += 1
            self.counters.generation_tokens += n_out
        finally:
            self.counters.in_flight -= 1
            if not finished:
                self.counters.disconnects += 1
                self.disconnected.set()
                self.disconnected = trio.Event()

    async def _stream(self, conn: h11.Connection, stream: trio.SocketStream, chat: bool,
                      rid: str, model: str, n_out: int, usage: dict[str, int],
                      include_usage: bool) -> None:
        s = self.settings
        head = h11.Response(status_code=200, headers=[
            ("content-type", "text/event-stream; charset=utf-8"), ("transfer-encoding", "chunked")])
        await stream.send_all(conn.send(head) or b"")
        created = int(time.time())
        chunks: list[dict[str, Any]] = []
        if chat:
            chunks.append(_chat_chunk(rid, created, model, {"role": "assistant", "content": ""},
                                      None))
        for i in range(n_out):
            last = i == n_out - 1
            reason = "length" if last else None
            text = f" tok{i}"
            chunks.append(_chat_chunk(rid, created, model, {"content": text}, reason) if chat
                          else _text_chunk(rid, created, model, text, reason))
        if include_usage:
            chunks.append({"id": rid, "object": "chat.completion.chunk" if chat
                           else "text_completion", "created": created, "model": model,
                           "choices": [], "usage": usage})
        for i, chunk in enumerate(chunks):
            if i == s.hang_after_chunks:
                await trio.sleep_forever()
            if i > (1 if chat else 0):
                await trio.sleep(s.itl_s)
            line = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
            await stream.send_all(conn.send(h11.Data(data=line)) or b"")
        await stream.send_all(conn.send(h11.Data(data=b"data: [DONE]\n\n")) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")

    # -- load and the prefix cache ---------------------------------------------------

    def _prefix(self, tokens: list[int]) -> None:
        """Cache the prompt's full blocks as vLLM would, publishing KV events."""
        s = self.settings
        bs = s.block_size
        self.counters.prompt_tokens += len(tokens)
        self.counters.prefix_queries += len(tokens)
        parent: bytes | None = None
        new: list[bytes] = []
        new_tokens: list[int] = []
        new_parent: bytes | None = None
        for start in range(0, len(tokens) - bs + 1, bs):
            block = tokens[start:start + bs]
            h = hashlib.sha256((parent or b"root") + bytes(block)).digest()
            if h in self._cache:
                self._cache.move_to_end(h)
                self.counters.prefix_hits += bs
            else:
                if not new:
                    new_parent = parent
                new.append(h)
                new_tokens += block
            parent = h
        evicted: list[bytes] = []
        for h in new:
            self._cache[h] = None
            while len(self._cache) > s.kv_capacity_blocks:
                old, _ = self._cache.popitem(last=False)
                evicted.append(old)
        if self.kv is not None and (new or evicted):
            events: list[Any] = []
            if new:
                events.append(stored(list(new), new_parent, new_tokens, bs))
            if evicted:
                events.append(removed(list(evicted)))
            self.kv.publish(events)

    def _kv_garbage(self) -> None:
        """Malformed KV-event messages, as a broken publisher might send: a bad
        sequence frame, too few frames, a payload that is not msgpack."""
        if self.kv is None:
            return
        self.kv.send_raw([self.kv.topic, b"short"])
        self.kv.send_raw([self.kv.topic])
        self.kv.publish_payload(b"\xc1 not msgpack")

    def _metrics(self) -> str:
        s = self.settings
        c = self.counters
        load = {"running": c.in_flight, "waiting": 0,
                "kv_usage": min(1.0, len(self._cache) / max(1, s.kv_capacity_blocks))}
        load.update(s.load)
        if s.metrics == "garbage":
            return "vllm:num_requests_running{model_name=oops 1\n\x00\x01 not prometheus\n"
        if s.metrics == "empty":
            return ""
        name = s.served_names[0]
        if s.kind == "sglang":
            lines = [
                ("sglang:num_running_reqs", "gauge", load["running"]),
                ("sglang:num_queue_reqs", "gauge", load["waiting"]),
                ("sglang:token_usage", "gauge", load["kv_usage"]),
                ("sglang:cache_hit_rate", "gauge",
                 c.prefix_hits / c.prefix_queries if c.prefix_queries else 0.0),
                ("sglang:gen_throughput", "gauge", load.get("gen_throughput", 0.0)),
                ("sglang:prompt_tokens_total", "counter", c.prompt_tokens),
                ("sglang:generation_tokens_total", "counter", c.generation_tokens),
            ]
        else:
            lines = [
                ("vllm:num_requests_running", "gauge", load["running"]),
                ("vllm:num_requests_waiting", "gauge", load["waiting"]),
                ("vllm:kv_cache_usage_perc", "gauge", load["kv_usage"]),
                ("vllm:prefix_cache_queries_total", "counter", c.prefix_queries),
                ("vllm:prefix_cache_hits_total", "counter", c.prefix_hits),
                ("vllm:prompt_tokens_total", "counter", c.prompt_tokens),
                ("vllm:generation_tokens_total", "counter", c.generation_tokens),
                ("vllm:num_preemptions_total", "counter", 0),
            ]
        if s.metrics == "missing":
            lines = [x for x in lines if "running" not in x[0] and "usage" not in x[0]]
        out = []
        if s.kind == "vllm":
            out.append("# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig")
            out.append("# TYPE vllm:cache_config_info gauge")
            out.append(f'vllm:cache_config_info{{block_size="{s.block_size}",engine="0",'
                       f'num_gpu_blocks="{s.num_gpu_blocks}",prefix_caching_hash_algo="sha256"}}'
                       " 1.0")
        for metric, kind, value in lines:
            out.append(f"# HELP {metric} {metric}")
            out.append(f"# TYPE {metric} {kind}")
            out.append(f'{metric}{{engine="0",model_name="{name}"}} {float(value)!r}')
        return "\n".join(out) + "\n"


def _text_chunk(rid: str, created: int, model: str, text: str, reason: str | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                         "stop_reason": None}]}


def _chat_chunk(rid: str, created: int, model: str, delta: dict, reason: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]}


def _full(chat: bool, rid: str, model: str, n_out: int, usage: dict[str, int]) -> dict:
    text = "".join(f" tok{i}" for i in range(n_out))
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "length",
                              "stop_reason": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": rid, "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice], "usage": usage}


async def _read_request(conn: h11.Connection,
                        stream: trio.SocketStream) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        else:  # ConnectionClosed, PAUSED
            return None, b""


async def _send(conn: h11.Connection, stream: trio.SocketStream, status: int, body: bytes,
                content_type: str) -> None:
    head = h11.Response(status_code=status, headers=[("content-type", content_type),
                                                     ("content-length", str(len(body)))])
    await stream.send_all((conn.send(head) or b"") + (conn.send(h11.Data(data=body)) or b"")
                          + (conn.send(h11.EndOfMessage()) or b""))


async def _send_json(conn: h11.Connection, stream: trio.SocketStream, status: int,
                     obj: Any) -> None:
    await _send(conn, stream, status, json.dumps(obj, separators=(",", ":")).encode(),
                "application/json")


async def _error(conn: h11.Connection, stream: trio.SocketStream, status: int, message: str,
                 kind: str, param: str | None = None) -> None:
    await _send_json(conn, stream, status,
                     {"error": {"message": message, "type": kind, "param": param, "code": status}})


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake vLLM/SGLang server (tests only).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kind", choices=("vllm", "sglang"), default="vllm")
    parser.add_argument("--served-name", action="append", default=None)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--itl", type=float, default=0.0)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--kv-events-port", type=int, default=None)
    parser.add_argument("--kv-replay-port", type=int, default=None)
    parser.add_argument("--kv-topic", default="kv-events")
    args = parser.parse_args()
    settings = FakeSettings(kind=args.kind, served_names=tuple(args.served_name or ["fake-model"]),
                            ttft_s=args.ttft, itl_s=args.itl, block_size=args.block_size)
    kv = None
    if args.kv_events_port is not None:
        kv = FakeKVPublisher(args.kv_events_port, args.kv_replay_port, args.kv_topic)
    engine = FakeEngine(settings, kv)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(engine.serve, args.port)
            print(f"READY {port}", flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    finally:
        if kv is not None:
            kv.close()


if __name__ == "__main__":
    main()
