"""The OpenAI-compatible HTTP server (FastAPI): /v1/models, /v1/chat/completions, /v1/completions
(SSE streaming or whole), /health, /metrics. Bodies are read with a size cap and validated by
schemas.py; every failure is an OpenAI-style error object and the server keeps serving."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from typing import Any, AsyncIterator, Callable, Iterator, Optional, Type

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kimi_runtime.generate import GenerationEvent, Generator
from kimi_runtime.server.metrics import Metrics
from kimi_runtime.server.queue import EngineWorker, Job, QueueFull
from kimi_runtime.server.schemas import (APIError, ChatCompletionRequest, CompletionRequest,
                                         _Sampling)

DEFAULT_MAX_BODY = 1 << 20


def _default_params(preset: str, overrides: dict[str, Any]) -> Any:
    from kimi_runtime.text import SamplingParams

    return SamplingParams.from_preset(preset, **overrides)


def create_app(generator: Generator, model_name: str, api_key: Optional[str] = None,
               queue_size: int = 8, max_body: int = DEFAULT_MAX_BODY,
               params_factory: Callable[[str, dict[str, Any]], Any] = _default_params) -> FastAPI:
    """A FastAPI app serving `generator` under `model_name`. `params_factory(preset, overrides)` builds
    sampling params (tests pass a stand-in)."""
    worker = EngineWorker(queue_size)
    metrics = Metrics()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="kimi-runtime", lifespan=lifespan)
    app.state.worker, app.state.metrics, app.state.generator = worker, metrics, generator

    # ---- errors
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.request(request.url.path, exc.status)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), "invalid_request_error",
                       code="not_found" if exc.status_code == 404 else None)
        return await _api_error(request, err)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return await _api_error(request, APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                                                  "server_error"))

    # ---- helpers
    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, token = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
            raise APIError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                           "authentication_error", code="invalid_api_key")

    async def read_json(request: Request, model: Type[BaseModel]) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise APIError(413, f"request body exceeds {max_body} bytes", code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body:
                raise APIError(413, f"request body exceeds {max_body} bytes", code="request_too_large")
            chunks.append(chunk)
        try:
            data = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        try:
            req = model.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            code = "missing_field" if first["type"] == "missing" else "invalid_value"
            raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"],
                           param=param, code=code) from None
        if req.model != model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server has "
                           f"{model_name!r}", param="model", code="model_not_found")
        return req

    def make_params(req: _Sampling, thinking: bool, max_tokens: int) -> Any:
        # Without max_tokens a request may use the rest of the context, as with OpenAI.
        overrides = {**req.sampling_overrides(), "max_tokens": max_tokens}
        try:
            return params_factory("thinking" if thinking else "instant", overrides)
        except (TypeError, ValueError) as e:
            raise APIError(400, str(e)) from None

    def budget(ids: list[int], req: _Sampling) -> int:
        try:
            return generator.check_budget(len(ids), req.max_tokens)
        except ValueError as e:
            raise APIError(400, str(e), param="max_tokens" if req.max_tokens else "messages",
                           code="context_length_exceeded") from None

    def submit(ids: list[int], params: Any, ignore_eos: bool, extra_stops: list[str]) -> Job:
        def run(cancel: threading.Event) -> Iterator[GenerationEvent]:
            for ev in generator.generate(ids, params, stream=True, cancel=cancel, ignore_eos=ignore_eos,
                                         extra_stops=extra_stops):
                if ev.finish_reason is not None:
                    metrics.generation(ev.usage, ev.timings, ev.finish_reason)
                yield ev

        try:
            return worker.submit(run)
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}; retry later", "rate_limit_error",
                           code="queue_full") from None

    async def collect(job: Job, request: Request) -> list[GenerationEvent]:
        async def watch() -> None:
            # Waiting on receive() is what notices a closed socket (StreamingResponse does the same).
            while True:
                msg = await request.receive()
                if msg["type"] == "http.disconnect":
                    job.cancel.set()
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            out = [ev async for ev in job.events()]
        finally:
            watcher.cancel()
        if not out:  # cancelled before it started: only a vanished client gets here
            raise APIError(499, "the request was cancelled", code="cancelled")
        return out

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def usage_dict(ev: GenerationEvent) -> dict[str, int]:
        u = ev.usage
        return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens} if u else {}

    def finish(ev: GenerationEvent) -> str:
        return "length" if ev.finish_reason == "length" else "stop"

    def streaming(endpoint: str, job: Job, frames: Callable[[GenerationEvent], list[dict]],
                  head: Optional[dict]) -> StreamingResponse:
        async def body() -> AsyncIterator[str]:
            if head is not None:
                yield sse(head)
            try:
                async for ev in job.events():
                    for obj in frames(ev):
                        yield sse(obj)
            except Exception as e:  # the status line is gone; report in-band, as OpenAI does
                yield sse(APIError(500, f"generation failed: {e}", "server_error").body())
            yield "data: [DONE]\n\n"

        metrics.request(endpoint, 200)
        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---- endpoints
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "queue_depth": worker.depth,
                "running": worker.running}

    @app.get("/metrics")
    async def metrics_text(request: Request) -> PlainTextResponse:
        check_auth(request)
        stats = getattr(generator.engine, "stats", None)
        text = metrics.render(worker.depth, worker.running, stats if callable(stats) else None)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "kimi-runtime",
                "context_length": generator.n_ctx}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_auth(request)
        metrics.request("/v1/models", 200)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model_info(name: str, request: Request) -> dict[str, Any]:
        check_auth(request)
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist", param="model",
                           code="model_not_found")
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        check_auth(request)
        req: ChatCompletionRequest = await read_json(request, ChatCompletionRequest)
        thinking = req.wants_thinking
        try:
            ids = generator.render_chat([m.to_template() for m in req.messages], thinking=thinking,
                                        tools=req.tools)
        except Exception as e:  # template errors (bad tool schema, role order) are the caller's
            raise APIError(400, f"cannot render the conversation: {e}", param="messages") from None
        params = make_params(req, thinking, budget(ids, req))
        job = submit(ids, params, req.ignore_eos, generator.chat_stops)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def frames(ev: GenerationEvent) -> list[dict]:
                out = []
                delta = {}
                if ev.text:
                    delta["content"] = ev.text
                if ev.reasoning:
                    delta["reasoning_content"] = ev.reasoning
                if delta or ev.finish_reason:
                    out.append({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                "finish_reason": finish(ev) if ev.finish_reason else None}]})
                if ev.finish_reason and include_usage:
                    out.append({**base, "choices": [], "usage": usage_dict(ev)})
                return out

            head = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]}
            return streaming("/v1/chat/completions", job, frames, head)
        evs = await collect(job, request)
        last = evs[-1]
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(e.text for e in evs)}
        reasoning = "".join(e.reasoning for e in evs)
        if reasoning:
            msg["reasoning_content"] = reasoning
        metrics.request("/v1/chat/completions", 200)
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_name,
                "choices": [{"index": 0, "message": msg, "logprobs": None,
                             "finish_reason": finish(last)}],
                "usage": usage_dict(last)}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        check_auth(request)
        req: CompletionRequest = await read_json(request, CompletionRequest)
        if isinstance(req.prompt, str):
            ids = generator.encode_prompt(req.prompt)
        else:
            ids = list(req.prompt)
            vocab = int(getattr(generator.tokenizer, "n_vocab", 0) or 0)
            if vocab and any(t < 0 or t >= vocab for t in ids):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        params = make_params(req, False, budget(ids, req))
        job = submit(ids, params, req.ignore_eos, [])
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "text_completion", "created": now, "model": model_name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def frames(ev: GenerationEvent) -> list[dict]:
                out = []
                if ev.text or ev.finish_reason:
                    out.append({**base, "choices": [{"index": 0, "text": ev.text, "logprobs": None,
                                "finish_reason": finish(ev) if ev.finish_reason else None}]})
                if ev.finish_reason and include_usage:
                    out.append({**base, "choices": [], "usage": usage_dict(ev)})
                return out

            return streaming("/v1/completions", job, frames, None)
        evs = await collect(job, request)
        metrics.request("/v1/completions", 200)
        return {**base, "choices": [{"index": 0, "text": "".join(e.text for e in evs),
                                     "logprobs": None, "finish_reason": finish(evs[-1])}],
                "usage": usage_dict(evs[-1])}

    return app
