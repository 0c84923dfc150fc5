"""Endpoints beyond OpenAI's that llama.cpp users reach for: /tokenize, /detokenize, /props, /slots
(llama.cpp server shapes), a clear 501 for /v1/embeddings, and the chat page at / (page.html)."""
from __future__ import annotations

from importlib import resources
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse

from kimi_runtime.server.schemas import APIError, DetokenizeRequest, TokenizeRequest


def page_html() -> str:
    """The chat page shipped in the package (one static file: HTML, CSS and JS)."""
    return resources.files("kimi_runtime.server").joinpath("page.html").read_text("utf-8")


def add_extra_routes(app: FastAPI, *, generator: Any, model_name: str, worker: Any, metrics: Any,
                     check_auth: Callable[[Request], None], read_body: Callable[..., Any],
                     validate: Callable[..., Any], n_vocab: int, defaults: dict[str, Any]) -> None:
    tok = generator.tokenizer

    def piece(i: int) -> str:
        fn = getattr(tok, "id_to_piece", None)
        return fn(i) if fn is not None else tok.decode([i])

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html())

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict[str, Any]:
        check_auth(request)
        req: TokenizeRequest = validate(TokenizeRequest, await read_body(request))
        add_bos = req.add_special and getattr(tok, "bos_id", None) is not None
        ids = tok.encode(req.content, add_bos=add_bos, parse_special=req.parse_special)
        metrics.request("/tokenize", 200)
        if req.with_pieces:
            return {"tokens": [{"id": i, "piece": piece(i)} for i in ids]}
        return {"tokens": ids}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict[str, Any]:
        check_auth(request)
        req: DetokenizeRequest = validate(DetokenizeRequest, await read_body(request))
        bad = [t for t in req.tokens if t < 0 or (n_vocab and t >= n_vocab)]
        if bad:
            raise APIError(400, f"tokens: id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})",
                           param="tokens", code="invalid_value")
        metrics.request("/detokenize", 200)
        return {"content": tok.decode(req.tokens)}

    def settings() -> dict[str, Any]:
        return {"n_ctx": generator.n_ctx, "model": model_name, "params": dict(defaults)}

    @app.get("/props")
    async def props(request: Request) -> dict[str, Any]:
        check_auth(request)
        from kimi_runtime import __version__

        template = getattr(generator, "template", None)
        metrics.request("/props", 200)
        return {"default_generation_settings": settings(), "total_slots": 1, "model_alias": model_name,
                "model_path": model_name, "chat_template": getattr(template, "source", None) or "",
                "modalities": {"vision": False, "audio": False},
                "build_info": f"kimi-runtime {__version__}"}

    @app.get("/slots")
    async def slots(request: Request) -> list[dict[str, Any]]:
        check_auth(request)
        metrics.request("/slots", 200)
        return [{"id": 0, "n_ctx": generator.n_ctx, "is_processing": bool(worker.running),
                 "queue_depth": worker.depth, "params": dict(defaults),
                 "n_past": int(getattr(generator.engine, "n_past", 0) or 0)}]

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        check_auth(request)
        raise APIError(501, "embeddings are not supported: this server runs a generative model only",
                       "not_implemented_error", code="not_implemented")
