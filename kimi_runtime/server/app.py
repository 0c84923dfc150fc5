"""The OpenAI-compatible HTTP server (FastAPI): /v1/models, /v1/chat/completions (tool calls,
reasoning, structured output), /v1/completions (SSE streaming or whole), /health, /metrics, plus
llama.cpp's /tokenize, /detokenize, /props, /slots and a chat page at / (extras.py). Bodies are read
with a size and nesting cap and validated by schemas.py; every failure is an OpenAI-style error
object and the server keeps serving."""
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
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kimi_runtime.generate import GenerationEvent, Generator
from kimi_runtime.server.chat_output import ChatOutput, finish_reason
from kimi_runtime.server.chat_request import ChatPlan, plan_chat
from kimi_runtime.server.metrics import Metrics
from kimi_runtime.server.queue import EngineWorker, Job, QueueFull
from kimi_runtime.server.schemas import (APIError, ChatCompletionRequest, CompletionRequest,
                                         _Sampling)

DEFAULT_MAX_BODY = 1 << 20
MAX_DEPTH = 64  # JSON nesting a request may have; deeper is refused before validation
RETRY_AFTER_S = 1


def _default_params(preset: str, overrides: dict[str, Any]) -> Any:
    from kimi_runtime.text import SamplingParams

    return SamplingParams.from_preset(preset, **overrides)


def create_app(generator: Generator, model_name: str, api_key: Optional[str] = None,
               queue_size: int = 8, max_body: int = DEFAULT_MAX_BODY,
               params_factory: Callable[[str, dict[str, Any]], Any] = _default_params,
               sampling_defaults: Optional[dict[str, Any]] = None) -> FastAPI:
    """A FastAPI app serving `generator` under `model_name`. `params_factory(preset, overrides)` builds
    sampling params (tests pass a stand-in). `sampling_defaults` (SamplingParams field names, e.g.
    {"temperature": 0.3, "top_p": 0.9}) apply when a request leaves a field out."""
    defaults = dict(sampling_defaults or {})
    worker = EngineWorker(queue_size)
    metrics = Metrics()
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        # the llguidance view of a 160k vocabulary takes ~3 s: built now, not on the first
        # structured request
        threading.Thread(target=_warm_grammar, args=(generator.tokenizer,), daemon=True).start()
        try:
            yield
        finally:
            worker.stop()

    # With a key the schema and docs are served by routes that check it (below).
    open_docs = api_key is None
    app = FastAPI(title="kimi-runtime", lifespan=lifespan, docs_url="/docs" if open_docs else None,
                  redoc_url="/redoc" if open_docs else None,
                  openapi_url="/openapi.json" if open_docs else None)
    app.state.worker, app.state.metrics, app.state.generator = worker, metrics, generator

    # ---- errors
    def label(request: Request) -> str:
        # metrics are labelled by route, so random 404 paths cannot grow the label set
        route = request.scope.get("route")
        return getattr(route, "path", None) or "other"

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.request(label(request), exc.status)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else \
            {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 429 else None
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

    async def read_body(request: Request) -> dict[str, Any]:
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
        except RecursionError:
            raise APIError(400, f"the body nests deeper than {MAX_DEPTH} levels",
                           code="nested_too_deeply") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        bad = _check_tree(data, MAX_DEPTH)
        if bad is not None:
            param, why = bad
            raise APIError(400, f"{param}: {why}", param=param,
                           code="nested_too_deeply" if why.startswith("nests") else "invalid_value")
        return data

    def validate(model: Type[BaseModel], data: dict[str, Any]) -> Any:
        try:
            req = model.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            param = ".".join(_field_path(first["loc"])) or None
            code = "missing_field" if first["type"] == "missing" else "invalid_value"
            raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"],
                           param=param, code=code) from None
        return req

    async def read_json(request: Request, model: Type[BaseModel]) -> Any:
        req = validate(model, await read_body(request))
        if req.model != model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server has "
                           f"{model_name!r}", param="model", code="model_not_found")
        return req

    n_vocab = int(getattr(generator.tokenizer, "n_vocab", 0) or 0)

    def make_params(req: _Sampling, thinking: bool, max_tokens: int) -> Any:
        # Without max_tokens a request may use the rest of the context, as with OpenAI.
        bias = req.sampling_overrides().get("logit_bias") or {}
        bad = [t for t in bias if n_vocab and t >= n_vocab]
        if bad:
            raise APIError(400, f"logit_bias: token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})",
                           param="logit_bias", code="invalid_value")
        overrides = {**defaults, **req.sampling_overrides(), "max_tokens": max_tokens}
        try:
            return params_factory("thinking" if thinking else "instant", overrides)
        except (TypeError, ValueError) as e:
            raise APIError(400, str(e)) from None

    def budget(ids: list[int], req: _Sampling, prompt_param: str) -> int:
        # a prompt that alone fills the context is the prompt's fault, whatever max_tokens says
        if not ids or len(ids) >= generator.n_ctx:
            raise APIError(400, f"the prompt has {len(ids)} tokens; the context holds {generator.n_ctx}",
                           param=prompt_param, code="context_length_exceeded")
        try:
            return generator.check_budget(len(ids), req.max_tokens)
        except ValueError as e:
            raise APIError(400, str(e), param="max_tokens", code="context_length_exceeded") from None

    def submit(ids: list[int], params: Any, ignore_eos: bool, extra_stops: list[str],
               constraint: Any = None) -> Job:
        def run(cancel: threading.Event) -> Iterator[GenerationEvent]:
            for ev in generator.generate(ids, params, stream=True, cancel=cancel, ignore_eos=ignore_eos,
                                         extra_stops=extra_stops, constraint=constraint):
                if ev.finish_reason is not None:
                    metrics.generation(ev.usage, ev.timings, ev.finish_reason)
                yield ev

        try:
            return worker.submit(run)
        except QueueFull as e:
            raise APIError(429, f"the server is busy: {e}; retry in {RETRY_AFTER_S} s", "rate_limit_error",
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

    def timings_dict(ev: GenerationEvent) -> dict[str, float]:
        # llama.cpp's names, which its web UI and ours read for tok/s
        t = ev.timings
        return {"prompt_n": t.prefill_tokens, "prompt_ms": round(t.prefill_s * 1e3, 3),
                "predicted_n": t.decode_tokens, "predicted_ms": round(t.decode_s * 1e3, 3),
                "predicted_per_second": round(t.decode_tok_s, 3)}

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

    def constraint_for(plan: ChatPlan, ids: list[int], thinking: Optional[bool]) -> Any:
        if plan.grammar_kind is None:
            return None
        from kimi_runtime.text import grammar

        opened = generator.think_open is not None and ids[-1] == generator.think_open
        reasoning = "open" if opened else "optional" if thinking else "none"
        tok = generator.tokenizer
        param = "response_format" if plan.grammar_kind == "json" else "tools"
        try:
            if plan.grammar_kind == "json":
                g = grammar.json_grammar(tok, plan.schema, reasoning)
            else:
                g = grammar.tool_call_grammar(tok, plan.call_tools or [], plan.first_index, plan.parallel,
                                              reasoning)
            return grammar.Constraint(tok, g)
        except grammar.GrammarError as e:
            raise APIError(400, f"{param}: cannot build a grammar: {e}", param=param,
                           code="invalid_schema") from None

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        check_auth(request)
        req: ChatCompletionRequest = await read_json(request, ChatCompletionRequest)
        plan = plan_chat(req)
        thinking = req.wants_thinking
        extra = {k: v for k, v in (req.chat_template_kwargs or {}).items()
                 if k not in ("thinking", "enable_thinking")}  # those travel as `thinking`
        kw = {"template_kwargs": extra} if extra else {}
        try:
            # a long prompt takes a while to render and tokenize: not on the event loop
            ids = await asyncio.to_thread(generator.render_chat, plan.messages, thinking=thinking,
                                          tools=plan.tools, **kw)
        except (ValueError, TypeError, RecursionError) as e:  # template errors are the caller's
            raise APIError(400, f"cannot render the conversation: {e}", param="messages") from None
        max_tokens = budget(ids, req, "messages")
        constraint = constraint_for(plan, ids, thinking)
        params = make_params(req, bool(thinking), max_tokens)
        job = submit(ids, params, req.ignore_eos, generator.chat_stops, constraint)
        out = ChatOutput(plan.parse_tools, plan.first_index)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def frames(ev: GenerationEvent) -> list[dict]:
                deltas = out.push(ev) + (out.finish() if ev.finish_reason else [])
                objs = [{**base, "choices": [{"index": 0, "delta": d, "logprobs": None,
                                              "finish_reason": None}]} for d in deltas]
                if ev.finish_reason:
                    objs.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                 "finish_reason": finish_reason(ev.finish_reason, out.has_calls)}],
                                 **({"timings": timings_dict(ev)} if ev.timings else {})})
                    if include_usage:
                        objs.append({**base, "choices": [], "usage": usage_dict(ev)})
                return objs

            head = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]}
            return streaming("/v1/chat/completions", job, frames, head)
        evs = await collect(job, request)
        last = evs[-1]
        for ev in evs:
            out.push(ev)
        out.finish()
        metrics.request("/v1/chat/completions", 200)
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_name,
                "choices": [{"index": 0, "message": out.message(), "logprobs": None,
                             "finish_reason": finish_reason(last.finish_reason, out.has_calls)}],
                "usage": usage_dict(last), **({"timings": timings_dict(last)} if last.timings else {})}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        check_auth(request)
        req: CompletionRequest = await read_json(request, CompletionRequest)
        if isinstance(req.prompt, str):
            ids = await asyncio.to_thread(generator.encode_prompt, req.prompt)
        else:
            ids = list(req.prompt)
            vocab = int(getattr(generator.tokenizer, "n_vocab", 0) or 0)
            if vocab and any(t < 0 or t >= vocab for t in ids):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        params = make_params(req, False, budget(ids, req, "prompt"))
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

    if not open_docs:
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi(request: Request) -> JSONResponse:
            check_auth(request)
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False)
        async def docs(request: Request) -> HTMLResponse:
            check_auth(request)
            return get_swagger_ui_html(openapi_url="/openapi.json", title="kimi-runtime")

    from kimi_runtime.server.extras import add_extra_routes

    add_extra_routes(app, generator=generator, model_name=model_name, worker=worker, metrics=metrics,
                     check_auth=check_auth, read_body=read_body, validate=validate, n_vocab=n_vocab,
                     defaults=defaults)
    return app


def _warm_grammar(tok: Any) -> None:
    try:
        from kimi_runtime.text import grammar

        grammar.ll_tokenizer(tok)
    except Exception:  # no llguidance, or an odd tokenizer: the first structured request will say
        pass


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _field_path(loc: Any) -> list[str]:
    """A pydantic error location without the union-member tags it adds ("literal[...]", "str")."""
    out = []
    for p in loc:
        if isinstance(p, str) and (not p.isidentifier() or p in _TYPE_TAGS) and out:
            break
        out.append(str(p))
    return out


def _check_tree(data: dict[str, Any], limit: int) -> Optional[tuple[str, str]]:
    """(top-level field, reason) for data nested deeper than `limit` or a string that is not
    Unicode text (a lone surrogate, which JSON's \\u escapes allow and no tokenizer takes)."""
    stack: list[tuple[Any, int, str]] = [(v, 1, str(k)) for k, v in data.items()]
    stack += [(k, 1, str(k)) for k in data]
    while stack:
        v, depth, top = stack.pop()
        if depth > limit:
            return top, f"nests deeper than {limit} levels"
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return top, "holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text"
        elif isinstance(v, dict):
            stack.extend((x, depth + 1, top) for x in v.values())
            stack.extend((k, depth + 1, top) for k in v)
        elif isinstance(v, list):
            stack.extend((x, depth + 1, top) for x in v)
    return None
