"""The OpenAI-compatible API on every node: `GET /v1/models`,
`POST /v1/completions` and `POST /v1/chat/completions`, streamed or not.

Any node accepts any request. The router (node.cluster.routing) picks a ready
replica with the same policy and admission rule as KServe requests; the node
that holds it generates (the engine runs in its own process), and a stream is
passed back chunk by chunk, never buffered. A request is retried on another
replica only before the first byte has gone to the client (node.cluster.tries).
A client that disconnects cancels the generation, and the engine frees its KV
blocks at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inference.errors import EngineDeadError, InvalidInput, ModelNotReady

from ..forward import ForwardError, Upstream
from .common import BUSY, FINAL, FORWARDED, SERVED_BY, TRACE, HTTPError, read_body, trace_of
from .openai_schema import (
    SSE_DONE,
    GenerationRequest,
    OpenAIError,
    chunk_json,
    completion_json,
    parse_generation,
    sse,
    usage_chunk_json,
    usage_json,
)
from .proxy import Proxy

if TYPE_CHECKING:
    from inference.llm.client import LLMClient
    from inference.llm.params import RequestOutput
    from inference.service import ModelStatus

    from ..daemon import Daemon

log = logging.getLogger("rumor.http")

#: Answers from a replica passed back to the client.
PASSED = ("content-type", SERVED_BY, TRACE, BUSY, "retry-after", "cache-control")


def error_response(e: OpenAIError, trace: str) -> Response:
    return JSONResponse(e.body(), status_code=e.status, headers={TRACE: trace, **e.headers})


class OpenAIAnswers:
    """The OpenAI dialect of node.api.proxy: OpenAI's error objects, and a
    replica's answer relayed chunk by chunk (a stream as it comes)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def busy(self, node: str, model: str, trace: str) -> Response:
        return error_response(_busy(node, model), trace)

    def unavailable(self, message: str, trace: str) -> Response:
        return error_response(_unavailable(message), trace)

    def not_found(self, model: str, trace: str) -> Response:
        e = OpenAIError(
            404, f"model {model!r} does not exist in this cluster", param="model",
            code="model_not_found",
        )  # fmt: skip
        return error_response(e, trace)

    def from_peer(self, up: Upstream, body: bytes) -> Response:
        passed = {k: v for k, v in up.headers.items() if k in PASSED}
        return Response(body, status_code=up.status, headers=passed)

    async def relay(self, up: Upstream, target: str, done: Callable[[], None]) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            """If the client leaves, the connection to the replica closes and
            the replica cancels the generation."""
            try:
                async for chunk in up.chunks():
                    yield chunk
            except ForwardError as e:
                log.warning("stream from %s broke: %s", target, e)
                yield sse({"error": {"message": f"the replica {target} failed mid-stream: {e}"}})
            finally:
                done()
                await up.aclose()

        passed = {k: v for k, v in up.headers.items() if k in PASSED}
        return StreamingResponse(chunks(), status_code=up.status, headers=passed)


class OpenAI:
    def __init__(self, daemon: Daemon, proxy: Proxy, registry: CollectorRegistry) -> None:
        self.daemon = daemon
        self.proxy = proxy
        buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        # Named after vLLM's histograms, so existing dashboards fit.
        self.ttft = Histogram(
            "rumor:time_to_first_token_seconds", "time to first token", ["model_name"],
            registry=registry, buckets=buckets,
        )  # fmt: skip
        self.itl = Histogram(
            "rumor:inter_token_latency_seconds", "time between output chunks", ["model_name"],
            registry=registry, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
        )  # fmt: skip
        self.e2e = Histogram(
            "rumor:e2e_request_latency_seconds", "end-to-end request latency", ["model_name"],
            registry=registry, buckets=buckets,
        )  # fmt: skip

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ]

    # -- GET /v1/models ----------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        """Every LLM the cluster holds or has in its catalog, OpenAI's list format."""
        d = self.daemon
        names: set[str] = set()
        for name in d.node.members:
            rec = d.node.record(name)
            models = rec.get("models") if rec is not None else None
            if isinstance(models, dict):
                names |= {m for m, info in models.items() if _is_llm(info)}
        for m, spec in d.operator.catalog().items():
            if isinstance(spec, dict) and _llm_source(spec.get("source")):
                names.add(m)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "rumor"} for m in sorted(names)
        ]
        return JSONResponse({"object": "list", "data": data})

    # -- generation --------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, chat=False)

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat=True)

    async def _generate(self, request: Request, chat: bool) -> Response:
        d = self.daemon
        trace = trace_of(request)
        if d.draining:
            return error_response(_unavailable("node is shutting down"), trace)
        try:
            body = await read_body(request, d.config.max_body_bytes, d.config.http_body_timeout)
        except HTTPError as e:
            return error_response(OpenAIError(e.status, e.message, headers=e.headers), trace)
        try:
            req = parse_generation(body, chat)
        except OpenAIError as e:
            return error_response(e, trace)
        path = request.url.path

        async def serve_local() -> Response:
            try:
                return await self._serve_local(req, body, path, trace, request)
            except OpenAIError as e:
                return error_response(e, trace)

        forwarded = request.headers.get(FORWARDED) == "1"
        # The prompt's block-hash chain, for prefix-cache affinity (None when the
        # policy ignores prefixes, or on the hop that serves a forwarded request).
        prefix = None
        if not forwarded:
            prefix = d.router.prefix_request(d.node, req.model, req.chat, req.messages, req.prompt)
        return await self.proxy.route(
            OpenAIAnswers(self.daemon),
            req.model,
            path,
            body,
            trace,
            forwarded,
            request.headers.get(FINAL) == "1",
            serve_local,
            prefix=prefix,
            llm=True,
        )

    # -- serving here ------------------------------------------------------------

    async def _serve_local(
        self, req: GenerationRequest, body: bytes, path: str, trace: str, request: Request
    ) -> Response:
        d = self.daemon
        status = d.inference.status(req.model)
        if status is not None and status.remote is not None:
            return await self._serve_remote(status, body, path, trace)
        try:
            llm = d.inference.llm(req.model)
        except ModelNotReady as e:
            raise _unavailable(str(e)) from None
        try:
            if req.chat:
                ids = llm.tokenizer.encode_chat(req.messages)
            else:
                ids = llm.tokenizer.encode(req.prompt)
        except (InvalidInput, ValueError, TypeError) as e:
            raise OpenAIError(400, f"cannot apply the chat template: {e}") from None
        d.prefixes.served(req.model, ids)  # an engine without KV events: its summary
        params = _sampling(req, len(ids), llm)
        rid = ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        headers = {SERVED_BY: d.name, TRACE: trace}
        t0 = time.perf_counter()
        gen = llm.generate(ids, params, request_id=rid)
        try:
            first = await _first(gen)
        except BaseException:
            await gen.aclose()
            raise
        self.ttft.labels(req.model).observe(time.perf_counter() - t0)
        if req.stream:
            return StreamingResponse(
                self._stream(req, rid, created, first, gen, t0),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        text, out = [first.text], first
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, request, nursery.cancel_scope)
                while not out.finished:
                    out = await gen.__anext__()
                    text.append(out.text)
                nursery.cancel_scope.cancel()
        finally:
            await gen.aclose()  # aborts the request if the client left meanwhile
        if not out.finished:
            return Response(status_code=499)  # the client is gone: nobody reads this
        self.e2e.labels(req.model).observe(time.perf_counter() - t0)
        u = out.usage
        usage = usage_json(u.prompt_tokens, u.completion_tokens, u.cached_tokens) if u else {}
        answer = completion_json(req, rid, created, "".join(text), out.finish_reason, usage)
        return JSONResponse(answer, headers=headers)

    async def _serve_remote(
        self, status: ModelStatus, body: bytes, path: str, trace: str
    ) -> Response:
        """Pass the request to the engine this node fronts (vLLM, SGLang...):
        its answer comes back chunk by chunk; an engine that cannot take it
        before answering anything is a 503, so the router tries elsewhere."""
        from inference.remote import EngineStreamError, EngineUnavailable

        engine = status.remote
        if engine is None or not engine.ready:
            raise _unavailable(f"the engine behind {status.config.name!r} is not ready")
        status.in_flight += 1
        try:
            resp = await engine.send(path, body)
        except EngineUnavailable as e:
            status.in_flight -= 1
            raise _unavailable(f"the engine is unavailable: {e}") from None
        except InvalidInput as e:
            status.in_flight -= 1
            raise OpenAIError(400, str(e)) from None
        if resp.status >= 500:
            detail = (await resp.read(4096)).decode(errors="replace")
            resp.close()
            status.in_flight -= 1
            raise _unavailable(f"the engine answered {resp.status}: {detail[:200]}")

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.aiter_bytes():
                    yield chunk
            except EngineStreamError as e:
                yield sse({"error": {"message": f"the engine broke off: {e}"}})
            finally:
                resp.close()  # a client that left stops the engine's generation
                status.in_flight -= 1

        headers = {SERVED_BY: self.daemon.name, TRACE: trace, "cache-control": "no-cache"}
        return StreamingResponse(
            relay(), status_code=resp.status, headers=headers, media_type=resp.content_type
        )

    async def _stream(
        self,
        req: GenerationRequest,
        rid: str,
        created: int,
        first: RequestOutput,
        gen: AsyncGenerator[RequestOutput, None],
        t0: float,
    ) -> AsyncIterator[bytes]:
        """SSE chunks as the engine produces them; a client that leaves closes
        this iterator, which aborts the request (its KV blocks come back)."""
        out, last_t = first, time.perf_counter()
        try:
            if req.chat:  # OpenAI's first chat chunk carries the role
                yield sse(chunk_json(req, rid, created, "", None, first=True))
            while True:
                if out.text or out.finished:
                    finish = out.finish_reason if out.finished else None
                    yield sse(chunk_json(req, rid, created, out.text or None, finish))
                if out.finished:
                    break
                out = await gen.__anext__()
                now = time.perf_counter()
                self.itl.labels(req.model).observe(now - last_t)
                last_t = now
            if req.include_usage and out.usage is not None:
                u = out.usage
                usage = usage_json(u.prompt_tokens, u.completion_tokens, u.cached_tokens)
                yield sse(usage_chunk_json(req, rid, created, usage))
            yield SSE_DONE
            self.e2e.labels(req.model).observe(time.perf_counter() - t0)
        except EngineDeadError as e:
            yield sse({"error": {"message": f"the engine died mid-stream: {e}"}})
        finally:
            await gen.aclose()


def _sampling(req: GenerationRequest, prompt_len: int, llm: LLMClient) -> Any:
    from inference.llm.params import SamplingParams

    ctx = llm.info.max_model_len
    if prompt_len >= ctx:
        raise OpenAIError(
            400,
            f"the prompt is {prompt_len} tokens; this model's context is {ctx}",
            param="messages" if req.chat else "prompt",
            code="context_length_exceeded",
        )
    max_tokens = req.max_tokens if req.max_tokens is not None else min(256, ctx - prompt_len)
    if prompt_len + max_tokens > ctx:
        raise OpenAIError(
            400,
            f"max_tokens={max_tokens} with a {prompt_len}-token prompt exceeds this "
            f"model's context of {ctx} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stop,
        )
    except InvalidInput as e:
        raise OpenAIError(400, str(e)) from None


async def _first(gen: AsyncGenerator[RequestOutput, None]) -> RequestOutput:
    """The first output: the prompt was accepted and prefilled. A bad request
    is a 400; an engine that died, a 503 (another replica may serve it)."""
    try:
        return await gen.__anext__()
    except InvalidInput as e:
        raise OpenAIError(400, str(e)) from None
    except (EngineDeadError, ModelNotReady) as e:
        raise _unavailable(str(e)) from None
    except StopAsyncIteration:
        raise _unavailable("the engine ended the request without output") from None


async def _cancel_on_disconnect(request: Request, scope: trio.CancelScope) -> None:
    """Wait for the client to leave (the body is already read), then cancel."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            scope.cancel()
            return


def _unavailable(message: str) -> OpenAIError:
    return OpenAIError(
        503, message, type_="service_unavailable", code="unavailable",
        headers={"Retry-After": "1"},
    )  # fmt: skip


def _busy(node: str, model: str) -> OpenAIError:
    return OpenAIError(
        503, f"{node} is busy with {model!r} (queue at its bound)", type_="service_unavailable",
        code="busy", headers={"Retry-After": "0", BUSY: "1"},
    )  # fmt: skip


def _is_llm(info: object) -> bool:
    return isinstance(info, dict) and info.get("kind") == "llm"


def _llm_source(source: object) -> bool:
    return isinstance(source, str) and (
        source.startswith("builtin:llm") or source.startswith("hf:") or "+http" in source
    )
